# wharf-ignore-file WH001
FROM alpine:3.20 AS build
# apk's cache is wiped below on purpose
# wharf-ignore WH002
RUN apk add build-base && make -C /src && rm -rf /var/cache/apk/*

# wharf-ignore=WH013,WH012
FROM alpine:latest
RUN apk add ca-certificates
COPY --from=build /src/out /usr/bin/out
