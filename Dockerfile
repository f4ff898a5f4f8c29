# safe-py-runner's HTTP service in a container. UNTESTED: the machine this project is built on cannot
# fetch a base image. The workers need unprivileged user namespaces inside the container (run
# `safe-py-runner doctor` in it to see which sandbox layers are on).
FROM debian:12 AS build
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      g++ cmake make pkg-config python3-dev libboost-dev nlohmann-json3-dev doctest-dev libtomlplusplus-dev \
      libcli11-dev libseccomp-dev && rm -rf /var/lib/apt/lists/*
COPY . /src
RUN cmake -S /src -B /build -DSPR_BUILD_TESTS=OFF -DSPR_BUILD_BENCH=OFF -DSPR_BUILD_PYTHON=OFF \
      -DCMAKE_INSTALL_PREFIX=/opt/spr && cmake --build /build -j"$(nproc)" && cmake --install /build

FROM debian:12
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 libpython3.11 libseccomp2 libtomlplusplus3 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/spr /opt/spr
USER 65534:65534
EXPOSE 8080
ENTRYPOINT ["/opt/spr/bin/safe-py-runner"]
CMD ["http", "--listen", "0.0.0.0:8080", "--token-file", "/secrets/tokens"]
