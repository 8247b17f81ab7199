# The one image every Kubeflow step runs in: CUDA torch, the locked dependencies, the vllm extra.
# Build: docker build -t ghcr.io/rl2f/rl2f:0.1.0 .   (then RL2F_IMAGE=... rl2f pipeline compile)
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HOME=/cache/huggingface \
    GX_ANALYTICS_ENABLED=false \
    TRL_EXPERIMENTAL_SILENCE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev git \
      build-essential util-linux ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3.11 -m venv /opt/venv \
 && pip install --upgrade "pip>=25"

WORKDIR /app
COPY requirements.lock pyproject.toml README.md ./
# The lock pins torch's CPU build for laptops and CI; the image swaps in the CUDA build of the
# same release and lets the vllm extra pull what it needs on top of the locked set.
RUN sed -e 's/^torch==\([0-9.]*\)+cpu/torch==\1/' requirements.lock > /tmp/requirements.gpu.lock \
 && pip install --compile -r /tmp/requirements.gpu.lock \
 && pip install --compile "vllm"

COPY src ./src
COPY components ./components
COPY pipelines ./pipelines
COPY params.yaml dvc.yaml ./
COPY profiles ./profiles
RUN pip install --compile --no-deps -e . \
 && useradd --create-home --uid 1000 rl2f \
 && mkdir -p /cache/huggingface /workspace \
 && chown -R rl2f:rl2f /cache /workspace

USER rl2f
WORKDIR /workspace
VOLUME ["/cache/huggingface"]
ENTRYPOINT ["rl2f"]
CMD ["--help"]
