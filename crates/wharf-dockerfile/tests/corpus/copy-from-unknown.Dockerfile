FROM golang:1.22 AS builder
RUN go version
FROM alpine:3.20
COPY --from=bulder /go/bin /usr/local/bin
COPY --from=2 /x /x
COPY --from=builder /usr/local/go/VERSION /VERSION
COPY --from=busybox:1.36 /bin/busybox /bin/busybox
