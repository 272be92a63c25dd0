#!/bin/sh
# The slow, rarely changing part of every adaptcast image, shared by sender.Dockerfile and
# receiver.Dockerfile: Python, a virtual environment with torch, and the unprivileged user.
# It runs as root during `docker build`, before the source is copied, so that editing the
# source does not reinstall torch.
set -eu

# nvidia/cuda images come without Python, python images with it; from here on both run the
# daemons from /opt/venv, so the two kinds of base behave the same.
if ! command -v python3 >/dev/null 2>&1; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv
    rm -rf /var/lib/apt/lists/*
fi
python3 -m venv /opt/venv

# torch is pinned as in pyproject.toml, installed first as in .ci/run (CompressAI needs the
# matching torchvision); tests/test_deploy.py checks that the pins agree. nvidia/cuda images
# set CUDA_VERSION: they get PyPI's default wheel, which bundles the CUDA 13.0 libraries.
# Any other base gets the CPU-only wheel, several GB smaller.
if [ -n "${CUDA_VERSION:-}" ]; then
    set --
else
    set -- --index-url https://download.pytorch.org/whl/cpu
fi
/opt/venv/bin/pip install --no-cache-dir "$@" torch==2.14.1 torchvision==0.29.1

# A fixed numeric UID: Kubernetes can enforce runAsNonRoot only for a numeric USER, and
# volumes and host directories can be given to 10001 ahead of time.
groupadd --system --gid 10001 adaptcast
useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/adaptcast --no-create-home \
    --shell /usr/sbin/nologin adaptcast
# Owned by the user in the image, so that a fresh named volume mounted here inherits it.
install -d -o 10001 -g 10001 -m 0750 /var/lib/adaptcast
