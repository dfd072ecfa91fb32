FROM alpine:3.20
CMD ["echo", "one"]
ENTRYPOINT ["/bin/sh"]
CMD ["echo", "two"]
ENTRYPOINT ["/bin/ash"]
