# syntax=docker/dockerfile:1
# adaptcast sender: captures the cameras, fits adapters and encodes, on the edge box's GPU.
# Build from the repository root (.dockerignore keeps the context small):
#
#   docker build -f deploy/docker/sender.Dockerfile -t adaptcast-sender:0.1.0 .
#   docker run --gpus all -v /etc/adaptcast:/etc/adaptcast:ro \
#       -e ADAPTCAST_TOKEN_GATE -e ADAPTCAST_TOKEN_LAB adaptcast-sender:0.1.0
#
# The development machines have no Docker daemon, so this file has not been built there;
# tests/test_deploy.py checks it statically (hadolint, user, health check, torch pin).
#
# Base: torch 2.14.1's default Linux wheel carries its own CUDA 13.0 libraries (cuBLAS,
# cuDNN, ...), so the image needs no CUDA toolkit, only the host's driver, which the NVIDIA
# Container Toolkit mounts in. The small "base" flavour of nvidia/cuda 13.0 is chosen for what
# it declares: NVIDIA_REQUIRE_CUDA=cuda>=13.0, so on a host whose driver is older than CUDA
# 13.0 needs (580 or newer) the container refuses to start with a clear message, instead of
# torch quietly running on the CPU. The "runtime" flavour would add a second, unused copy of
# the CUDA libraries. CUDA 13 supports Turing (compute capability 7.5) and newer GPUs.
FROM nvidia/cuda:13.0.2-base-ubuntu24.04

COPY deploy/docker/prepare.sh /tmp/prepare.sh
RUN sh /tmp/prepare.sh && rm /tmp/prepare.sh
# The source the daemons need (.dockerignore leaves out tests, docs and the benchmarks, bench/),
# installed as the one package `adaptcast`; the source stays at /opt/adaptcast because
# configurations name the bundled demo clip by its path,
# /opt/adaptcast/shared/data/parking-aisle-10s.mp4.
COPY . /opt/adaptcast
RUN /opt/venv/bin/pip install --no-cache-dir /opt/adaptcast

# The health check reads its URL from the environment: set ADAPTCAST_HEALTHCHECK_URL when the
# configuration moves metrics.port or turns on metrics.tls (https://127.0.0.1:PORT/healthz;
# the check skips certificate verification, it only asks whether this process answers).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    ADAPTCAST_HEALTHCHECK_URL=http://127.0.0.1:9101/healthz
USER 10001:10001
WORKDIR /var/lib/adaptcast
# /metrics, /healthz, /readyz; the configuration must bind metrics.host 0.0.0.0 for it to be
# reachable from outside the container.
EXPOSE 9101
HEALTHCHECK --start-period=120s --start-interval=5s --interval=30s --timeout=5s --retries=3 \
    CMD ["python", "-c", "import os, ssl, urllib.request as r; r.urlopen(os.environ['ADAPTCAST_HEALTHCHECK_URL'], timeout=4, context=ssl._create_unverified_context())"]
ENTRYPOINT ["adaptcast"]
CMD ["sender", "--config", "/etc/adaptcast/sender.yaml"]
