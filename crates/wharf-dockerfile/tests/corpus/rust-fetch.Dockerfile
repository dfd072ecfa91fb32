FROM rust:1.79-alpine AS build
RUN apk add --no-cache musl-dev
WORKDIR /build
COPY . .
RUN cargo fetch
RUN cargo build --release --offline

FROM alpine:3.20
COPY --from=build /build/target/release/tool /usr/bin/tool
ENTRYPOINT ["/usr/bin/tool"]
