# C service: toolchain on Rocky Linux, docs rendered on Fedora, runtime on Rocky minimal.
FROM rockylinux:9 AS toolchain
RUN dnf install -y gcc make && dnf clean all

FROM toolchain AS build
WORKDIR /src
RUN dnf install -y zlib-devel && dnf clean all
COPY . .
RUN make

FROM fedora:40 AS docs
RUN dnf install -y pandoc && dnf clean all
COPY docs/ /docs/
RUN pandoc /docs/index.md -o /docs/index.html

FROM rockylinux:9-minimal
RUN microdnf install -y libstdc++ && microdnf clean all
COPY --from=build /src/app /usr/local/bin/app
COPY --from=docs /docs/index.html /usr/share/doc/app/
CMD ["app"]
