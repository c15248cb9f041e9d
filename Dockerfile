# syntax=docker/dockerfile:1
#
# Image of erc-stream: the `erc-stream` worker (default command) and `erc-train`, CPU build.
#
#   docker build -t erc-stream:0.1.0 .
#   docker run --rm -e ERC_BOOTSTRAP_SERVERS=kafka:9092 -v "$PWD/var/models:/models:ro" \
#     -e ERC_MODEL_STORE=/models -p 9400:9400 erc-stream:0.1.0
#   docker run --rm --entrypoint erc-train erc-stream:0.1.0 fit --help
#
# NOT BUILT IN THIS PROJECT'S DEV/CI ENVIRONMENT: it has no Docker (or other OCI) engine.
# tests/deploy/test_dockerfile.py checks this file statically instead: base image, the
# CPU torch index before the project install, the non-root user against the chart's
# runAsUser, the entrypoint and command against pyproject's console scripts and the CLI,
# the exposed port against the chart's metrics port, and .dockerignore.
#
# The Helm chart (deploy/helm/erc-stream) runs this image with `command: ["erc-stream"]`
# (worker) and `command: ["erc-train"]` (trainer), a read-only root filesystem, HOME=/tmp
# on an emptyDir and the model store mounted at ERC_MODEL_STORE.

ARG PYTHON_IMAGE=python:3.11-slim
# The torch build the project is tested with (Makefile); the +cpu wheel has no CUDA libraries.
ARG TORCH_VERSION=2.13.0
# Where the torch wheel comes from. For the chart's gpu.enabled mode build with a CUDA
# index of download.pytorch.org that matches the nodes' driver (--build-arg TORCH_INDEX=...);
# those wheels carry their CUDA libraries, so the base image stays the same.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

# ---------------------------------------------------------------- build: a venv in /opt/venv
FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION
ARG TORCH_INDEX
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
# torch first, from the CPU index by default: the plain PyPI `torch` requirement would pull a
# multi-GB CUDA build. `pip install .` then finds torch>=2.2 satisfied.
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY erc_stream ./erc_stream
COPY trainer ./trainer
RUN pip install . \
 && pip check \
 && erc-stream --help >/dev/null \
 && erc-train --help >/dev/null

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="erc-stream" \
      org.opencontainers.image.description="Streaming emotion recognition in conversations: Kafka worker and trainer (CPU)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
RUN groupadd --system --gid 10001 erc \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin erc
COPY --from=build /opt/venv /opt/venv
# Models load from local paths only (the model store); HOME points at the writable /tmp
# (an emptyDir in the chart) because the root filesystem is read-only there.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    ERC_MODEL_STORE=/models
WORKDIR /tmp
USER 10001:10001
# /metrics, /healthz, /readyz (ERC_METRICS_PORT)
EXPOSE 9400
# Exec form: the worker is PID 1 and gets SIGTERM itself (drain, flush, commit, exit 0).
ENTRYPOINT ["erc-stream"]
CMD ["worker"]
