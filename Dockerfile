# The images the Kubeflow steps run in, both Python 3.11 (pyproject.toml: requires-python
# ">=3.11,<3.12"), both without the dev extra, both running as uid 1000:
#   docker build --target gpu -t registry.example.com/rl2f:0.1.0 .      # steps that load models:
#                                                       # CUDA torch 2.13 + vLLM 0.32 (the default)
#   docker build --target cpu -t registry.example.com/rl2f-cpu:0.1.0 .  # CPU steps: params,
#                                                       # tracking, prepare, validate, report
# then: RL2F_IMAGE=registry.example.com/rl2f:0.1.0 \
#       RL2F_CPU_IMAGE=registry.example.com/rl2f-cpu:0.1.0 rl2f pipeline compile
# Every package comes from a lock (k8s/images/requirements-{cpu,gpu}.lock): nothing unpinned.

# ---------------------------------------------------------------- CPU image (slim, no CUDA)
FROM python:3.11-slim-bookworm AS cpu

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/cache/huggingface \
    GX_ANALYTICS_ENABLED=false \
    TRL_EXPERIMENTAL_SILENCE=1

# util-linux: `unshare`, which the code verifier's sandbox uses to drop network access.
# DL3008 (pin apt versions) is waived: Debian drops a superseded version from its archive when a
# security fix lands, so a pinned `util-linux=...` stops building; the base image tag pins Debian.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends util-linux \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 1000 rl2f

WORKDIR /app
COPY k8s/images/requirements-cpu.lock ./
# torch==2.13.0 resolves to 2.13.0+cpu from PyTorch's CPU index (no CUDA libraries).
RUN pip install --compile --extra-index-url https://download.pytorch.org/whl/cpu \
      -r requirements-cpu.lock

COPY pyproject.toml README.md ./
COPY src ./src
COPY components ./components
COPY pipelines ./pipelines
COPY params.yaml dvc.yaml ./
COPY profiles ./profiles
RUN pip install --compile --no-deps . \
 && mkdir -p /cache/huggingface /workspace \
 && chown -R rl2f:rl2f /cache /workspace

USER 1000
WORKDIR /workspace
ENTRYPOINT ["rl2f"]
CMD ["--help"]

# ---------------------------------------------------------------- GPU image (CUDA torch + vLLM)
# Ubuntu 22.04 ships Python 3.10 and 24.04 ships 3.12: Python 3.11 comes from the deadsnakes PPA.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04 AS gpu

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/cache/huggingface \
    GX_ANALYTICS_ENABLED=false \
    TRL_EXPERIMENTAL_SILENCE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# build-essential: Triton (under vLLM and torch.compile) compiles its launcher stubs at run time.
# DL3008 waived as in the cpu stage: the deadsnakes PPA keeps only its newest python3.11 build.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common gpg-agent ca-certificates \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev \
      build-essential util-linux \
 && apt-get purge -y software-properties-common gpg-agent && apt-get autoremove -y \
 && rm -rf /var/lib/apt/lists/* \
 && python3.11 -m venv /opt/venv \
 && useradd --create-home --uid 1000 rl2f

WORKDIR /app
# vllm==0.32.0 is the newest vLLM built on torch 2.13.0; the lock pins both (and the CUDA torch
# wheel from PyPI), so no install step can replace the locked torch.
COPY k8s/images/requirements-gpu.lock ./
RUN pip install --compile -r requirements-gpu.lock

COPY pyproject.toml README.md ./
COPY src ./src
COPY components ./components
COPY pipelines ./pipelines
COPY params.yaml dvc.yaml ./
COPY profiles ./profiles
RUN pip install --compile --no-deps . \
 && mkdir -p /cache/huggingface /workspace \
 && chown -R rl2f:rl2f /cache /workspace

USER 1000
WORKDIR /workspace
ENTRYPOINT ["rl2f"]
CMD ["--help"]
