from alpine:3.20 as base
run apk add \
    # we need these for building
    git \
    make
copy . /src
workdir /src
run make && \
    make install
