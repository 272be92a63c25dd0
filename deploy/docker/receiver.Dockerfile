# syntax=docker/dockerfile:1
# adaptcast receiver: WHIP signaling, decoding, live view, archive. Build from the repository
# root (.dockerignore keeps the context small):
#
#   docker build -f deploy/docker/receiver.Dockerfile -t adaptcast-receiver:0.1.0 .
#   docker run --network host -v /etc/adaptcast:/etc/adaptcast:ro \
#       -v adaptcast-archive:/var/lib/adaptcast -e ADAPTCAST_TOKEN_GATE adaptcast-receiver:0.1.0
#
# --network host because the streams themselves do not come through port 8080: WebRTC offers
# the senders this container's own addresses and a UDP port chosen per connection, which a
# container behind Docker's NAT cannot offer to senders on other machines (-p 8080:8080 is
# enough only for senders on the same Docker network, as in deploy/compose).
#
# CPU by default (decoding is real time on a few cores at camera resolutions). The CUDA
# variant is the same file on the sender's base (see sender.Dockerfile for why that base);
# deploy/docker/prepare.sh then installs torch's CUDA wheel instead of the CPU one:
#
#   docker build -f deploy/docker/receiver.Dockerfile \
#       --build-arg BASE=nvidia/cuda:13.0.2-base-ubuntu24.04 -t adaptcast-receiver:0.1.0-cuda .
#
# The development machines have no Docker daemon, so this file has not been built there;
# tests/test_deploy.py checks it statically (hadolint, user, health check, torch pin).
#
# Python 3.12, the version Ubuntu 24.04 gives the CUDA images, so every image runs the same one.
ARG BASE=python:3.12-slim-trixie
FROM ${BASE}

COPY deploy/docker/prepare.sh /tmp/prepare.sh
RUN sh /tmp/prepare.sh && rm /tmp/prepare.sh
# The RTSP server (rtsp.enabled) is GStreamer's, driven through PyGObject by the distribution's
# own Python (/usr/bin/python3, rtsp.python), not the venv's: Debian and Ubuntu package the
# bindings for it. Versions follow the base image's release, hence no pins.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-gi \
        gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad \
        glib-networking \
    && rm -rf /var/lib/apt/lists/*
# The source the daemons need, installed as the one package `adaptcast` (no bench code: see
# .dockerignore), at the same path as in the sender image.
COPY . /opt/adaptcast
RUN /opt/venv/bin/pip install --no-cache-dir /opt/adaptcast

# The health check reads its URL from the environment: set ADAPTCAST_HEALTHCHECK_URL when the
# configuration moves listen.port or turns on tls (https://127.0.0.1:PORT/healthz; the check
# skips certificate verification, it only asks whether this process answers).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    ADAPTCAST_HEALTHCHECK_URL=http://127.0.0.1:8080/healthz
USER 10001:10001
WORKDIR /var/lib/adaptcast
# The archive (archive.dir: /var/lib/adaptcast/archive): a volume, so that recordings outlive
# the container even when the operator forgets -v.
VOLUME ["/var/lib/adaptcast"]
# WHIP at /whip/<camera>, the live view at /, /metrics, /healthz, /readyz; the configuration
# must bind listen.host 0.0.0.0 for it to be reachable from outside the container. RTSP at
# rtsp://HOST:8554/<camera>: RTP interleaved in that TCP connection works through any NAT;
# RTP over UDP uses ports each client negotiates, which only --network host lets through.
EXPOSE 8080 8554
HEALTHCHECK --start-period=120s --start-interval=5s --interval=30s --timeout=5s --retries=3 \
    CMD ["python", "-c", "import os, ssl, urllib.request as r; r.urlopen(os.environ['ADAPTCAST_HEALTHCHECK_URL'], timeout=4, context=ssl._create_unverified_context())"]
ENTRYPOINT ["adaptcast"]
CMD ["receiver", "--config", "/etc/adaptcast/receiver.yaml"]
