FROM debian:12
ADD https://github.com/krallin/tini/releases/download/v0.19.0/tini /tini
ADD --checksum=sha256:24454f830cdb571e2c4ad15481119c43b3cafd48dd869a9b2945d1036d1dc68d https://example.com/a.tar /a
ADD rootfs.tar.xz /
ADD config/ /etc/app/
RUN chmod +x /tini
ENTRYPOINT ["/tini", "--"]
