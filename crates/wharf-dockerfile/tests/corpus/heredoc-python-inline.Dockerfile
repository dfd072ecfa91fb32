# syntax=docker/dockerfile:1
FROM python:3.12-alpine
RUN <<EOF
apk add --no-cache git
pip install --no-cache-dir requests
EOF
RUN python3 <<EOF
import sys
print(sys.version)
EOF
CMD ["python3"]
