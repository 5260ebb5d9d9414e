# syntax=docker/dockerfile:1
# SD-Turbo server image for SageMaker: `docker run IMAGE serve` runs `sdturbo serve`, which
# answers GET /ping and POST /invocations on $SAGEMAKER_BIND_TO_PORT (8080).
# No weights in the image: SageMaker puts the model artifact in /opt/ml/model.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

# torch's CUDA wheels bundle cuDNN/cuBLAS; the index must match the base image's CUDA major.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

LABEL org.opencontainers.image.title="sdturbo" \
      org.opencontainers.image.description="SD-Turbo on Ray Serve, SageMaker serving contract" \
      com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HUB_OFFLINE=1 \
    SAGEMAKER_BIND_TO_PORT=8080

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Ubuntu drops superseded package versions from its archive, so apt pins break rebuilds; the
# base image tag pins the release and ECR keeps the built image under its commit SHA.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv "$VIRTUAL_ENV"

WORKDIR /opt/program

# Layer 1: torch for CUDA, the largest layer and the one that changes least.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

# Layer 2: the project's dependencies (with the gpu extra), from pyproject.toml alone. Empty stub
# packages stand in for the code, so editing the code does not invalidate this layer.
COPY pyproject.toml README.md ./
# The project itself (".") has no version pin; its dependencies are bounded in pyproject.toml.
# hadolint ignore=DL3013
RUN mkdir -p serve_app optimize loadtest \
    && touch serve_app/__init__.py optimize/__init__.py loadtest/__init__.py \
    && pip install ".[gpu]" "torch==${TORCH_VERSION}" \
    && pip uninstall -y sdturbo \
    && rm -rf serve_app optimize loadtest build ./*.egg-info

# Layer 3: the code, without touching the dependencies installed above.
COPY serve_app ./serve_app
COPY optimize ./optimize
COPY loadtest ./loadtest
# hadolint ignore=DL3013
RUN pip install --no-deps . \
    && rm -rf build ./*.egg-info

# No USER: SageMaker's hosting contract runs inference containers as root and copies the model
# into /opt/ml/model as root ("Use your own inference code", SageMaker developer guide;
# aws/sagemaker-inference-toolkit#72). The container runs with network isolation instead.
EXPOSE 8080

# Exec form, so SageMaker's `serve` argument becomes `sdturbo serve` and SIGTERM reaches it.
ENTRYPOINT ["sdturbo"]
CMD ["serve"]
