# syntax=docker/dockerfile:1.7
FROM debian:12-slim
RUN <<EOF
set -eux
apt-get update
apt-get install -y --no-install-recommends curl ca-certificates
EOF
COPY <<-EOT /etc/app/config.ini
	[server]
	port = 8080
	EOT
RUN <<SCRIPT1 bash && <<SCRIPT2 bash
echo first
SCRIPT1
echo second
SCRIPT2
COPY <<EOF /usr/local/bin/entry.sh
#!/bin/sh
exec "$@"
EOF
ENTRYPOINT ["/usr/local/bin/entry.sh"]
