# syntax=docker/dockerfile:1
# SD-Turbo server image for SageMaker: `docker run IMAGE serve` runs `sdturbo serve`, which
# answers GET /ping and POST /invocations on $SAGEMAKER_BIND_TO_PORT (8080).
# No weights in the image: SageMaker puts the model artifact in /opt/ml/model.
#
# The defaults build the GPU image for AWS. The same file builds the CPU image the container
# test runs (container/build.sh): BASE_IMAGE=<debootstrapped Debian>, TORCH_VERSION=2.13.0+cpu,
# TORCH_INDEX_URL=https://pypi.org/simple, SDTURBO_DEVICE=cpu.
#
# -base, not -runtime: torch's CUDA wheels carry cuBLAS, cuDNN, NCCL and the CUDA runtime as
# nvidia-* pip packages, so -runtime would ship those libraries twice. The base keeps what the
# NVIDIA Container Toolkit reads (NVIDIA_VISIBLE_DEVICES, NVIDIA_DRIVER_CAPABILITIES).
ARG BASE_IMAGE=nvidia/cuda:12.6.3-base-ubuntu24.04
FROM ${BASE_IMAGE}

# torch 2.13 is built for CUDA 12.6, 13.0 and 13.2 (pytorch RELEASE.md). SageMaker's newest
# inference AMI (al2-ami-sagemaker-inference-gpu-3-1) has driver 550 = CUDA 12.4: 13.x needs
# driver >= 580; 12.6 runs on any driver >= 525 by CUDA minor-version compatibility. PyPI's
# torch 2.13.0 is the CUDA 13.0 build, hence the explicit cu126 index.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
# The server's device: cuda on AWS, so a host without a usable GPU fails at start-up instead of
# serving fp32 on the CPU; the CPU test image passes cpu.
ARG SDTURBO_DEVICE=cuda
# Build-time only, empty on AWS: container/build.sh mounts the host's CA bundle and wheel folder
# and names them here (ARGs are not kept in the image's environment).
ARG PIP_CERT=""
ARG PIP_FIND_LINKS=""

LABEL org.opencontainers.image.title="sdturbo" \
      org.opencontainers.image.description="SD-Turbo on Ray Serve, SageMaker serving contract" \
      com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true

# SDTURBO_COMPILE_CACHE_MISS=eager: a replica whose artifact has no compile cache that fits this
# machine serves uncompiled at once (and says so in /ping and its log) instead of compiling
# every shape inside SageMaker's health-check window.
# NVIDIA_REQUIRE_CUDA: what the cu126 wheels need (any CUDA 12 driver, >= 525), checked by the
# NVIDIA Container Toolkit at container start; the base's own value names 12.6 plus per-brand
# exceptions. On SageMaker's default driver 470 (CUDA 11.4) the container then refuses to start
# with "unsatisfied condition: cuda>=12.0" instead of torch finding no GPU.
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HUB_OFFLINE=1 \
    SAGEMAKER_BIND_TO_PORT=8080 \
    SDTURBO_DEVICE=${SDTURBO_DEVICE} \
    SDTURBO_COMPILE_CACHE_MISS=eager \
    NVIDIA_REQUIRE_CUDA="cuda>=12.0"

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# g++ and the Python headers: Inductor compiles C++ kernels (CPU) and Triton builds its kernel
# launcher with a C compiler against Python.h at run time, cached kernels or not
# (sgl-project/sglang#1067). Without them a compile-cache artifact never turns healthy.
# Distributions drop superseded package versions from their archives, so apt pins break
# rebuilds; the base image tag pins the release and ECR keeps the built image under its SHA.
# apt-get clean: Docker Hub's Debian/Ubuntu images drop downloaded .debs by their own apt
# config; a debootstrapped base keeps them (159 MB here).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev g++ ca-certificates \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv "$VIRTUAL_ENV"

WORKDIR /opt/program

# Layer 1: torch, the largest layer and the one that changes least.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

# Layer 2: the server's dependencies (the serve extra), from pyproject.toml alone. Empty stub
# packages (and an empty README, which pyproject names) stand in for the code, so editing the
# code or the README does not invalidate this layer. Not the gpu extra: xformers' wheels are
# built against PyPI's torch (CUDA 13) and would replace the cu126 build; SDPA is the default.
COPY pyproject.toml ./
# The project itself (".") has no version pin; its dependencies are bounded in pyproject.toml.
# hadolint ignore=DL3013
RUN mkdir -p serve_app optimize \
    && touch README.md serve_app/__init__.py optimize/__init__.py \
    && pip install ".[serve]" "torch==${TORCH_VERSION}" \
    && pip uninstall -y sdturbo \
    && rm -rf serve_app optimize build README.md ./*.egg-info

# Layer 3: the code, without touching the dependencies installed above. optimize/ is here so
# an artifact can be built with this very image on the target instance type.
COPY README.md ./
COPY serve_app ./serve_app
COPY optimize ./optimize
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
