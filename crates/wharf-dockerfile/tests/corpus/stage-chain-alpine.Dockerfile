FROM alpine:3.20 AS base
RUN sed -i 's/dl-cdn.alpinelinux.org/mirrors.ustc.edu.cn/g' /etc/apk/repositories
RUN apk add --no-cache ca-certificates

FROM base AS tools
RUN apk add --no-cache curl jq

FROM tools
RUN apk add --no-cache bash
CMD ["bash"]
