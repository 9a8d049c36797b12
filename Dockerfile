# syntax=docker/dockerfile:1.7
# The aal-k8s worker image: the PyTorch that CI tests + the package, with the fused-heads extension
# compiled for A100 (sm_80) and H100/H200 (sm_90), plus PTX so newer GPUs JIT it. Build and push:
#
#   docker build -t ghcr.io/your-org/aal-k8s:0.1.0 .
#   docker push ghcr.io/your-org/aal-k8s:0.1.0
#
# (docs/kubernetes.md has the details: buildx for an amd64 image from an arm64 laptop, registry
# credentials, checking the extension in the image.) No GPU is needed to build.
#
# Versions. torch and torchvision are the CUDA wheels from PyPI that CI installs and tests, pinned
# here; CUDA_VERSION is the toolkit those wheels were built with (torch.version.cuda), because the
# extension's nvcc must match it. pyproject.toml's torch range is the one source of truth:
# tests/test_image.py fails when these pins leave it, or when their CUDA major differs from the
# torch the tests run with. The build below also fails if the wheel's CUDA is not CUDA_VERSION.
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG CUDA_VERSION=13.0.1
ARG UBUNTU_VERSION=24.04

# -- build: compile the wheel with nvcc, against the pinned torch -------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION} AS build
ARG TORCH_VERSION
ARG TORCHVISION_VERSION
ARG CUDA_VERSION
ENV TORCH_CUDA_ARCH_LIST="8.0;9.0+PTX" \
    CUDA_HOME=/usr/local/cuda \
    MAX_JOBS=8 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev g++ \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
# --no-build-isolation compiles against this torch (the extension's ABI must match the torch it is
# imported with), so the build requirements are installed here explicitly.
RUN pip install "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" "setuptools>=69" wheel ninja pybind11 \
 && python -c "import torch, sys; want = '${CUDA_VERSION}'.rsplit('.', 1)[0]; \
sys.exit(None if torch.version.cuda == want else f'torch {torch.__version__} is built with CUDA {torch.version.cuda}, the image has {want}')"
WORKDIR /src
# .dockerignore keeps only what the build needs (pyproject.toml, setup.py, csrc/, aal_k8s/, README.md, LICENSE).
COPY . .
RUN pip wheel --no-build-isolation --no-deps --wheel-dir /wheels . \
 && ls -l /wheels

# -- runtime: the same Python and torch; CUDA libraries come with the torch wheel -----------------
FROM ubuntu:${UBUNTU_VERSION}
ARG TORCH_VERSION
ARG TORCHVISION_VERSION
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    TORCH_HOME=/opt/torch \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/matplotlib
# (NVIDIA_*: what nvidia/cuda images set, so the container toolkit mounts the driver here too)
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
COPY --from=build /wheels /wheels
# One resolver run with the pins, so the package's dependencies cannot move torch.
# The import check fails the build if either extension is missing or does not load against this
# torch (loading the CUDA one needs the CUDA runtime libraries, not a GPU).
RUN pip install "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" /wheels/*.whl \
 && rm -rf /wheels \
 && python -c "import torch, importlib; [importlib.import_module(m) for m in ('aal_k8s._C', 'aal_k8s._C_cuda')]" \
 && aal-k8s --help >/dev/null
# ImageNet weights of ResNet18 (model.pretrained: imagenet), baked in: pods need no internet.
RUN mkdir -p /opt/torch \
 && python -c "import torchvision; torchvision.models.resnet18(weights='IMAGENET1K_V1')" \
 && chmod -R a+rX /opt/torch
# Non-root; numeric so that runAsNonRoot can verify it. Pods run as 10001 (k8s_manifests.WORKER_UID).
RUN groupadd --gid 10001 aal && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin aal
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["aal-k8s"]
CMD ["worker", "--help"]
