FROM ubuntu:24.04
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update && \
    apt-get install -y --no-install-recommends \
        # build tools
        build-essential \

        cmake \
        git && \
    rm -rf /var/lib/apt/lists/*
RUN sudo useradd dev
WORKDIR src
CMD ["bash"]
