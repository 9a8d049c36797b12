# syntax=docker/dockerfile:1.7
# The aal-k8s worker image: CUDA PyTorch + the package, with the fused-heads extension compiled
# for A100 (sm_80) and H100 (sm_90, plus PTX so newer GPUs JIT it). Build and push:
#
#   docker build -t ghcr.io/your-org/aal-k8s:0.1.0 .
#   docker push ghcr.io/your-org/aal-k8s:0.1.0
#
# (docs/kubernetes.md has the details: buildx for an amd64 image from an arm64 laptop, registry
# credentials, checking the extension in the image.) The devel image has nvcc; no GPU is needed
# to build. The runtime image has the same PyTorch and CUDA runtime, without the compilers.

ARG PYTORCH_VERSION=2.5.1
ARG CUDA_TAG=cuda12.4-cudnn9

# -- build: compile the wheel ------------------------------------------------------------------
FROM pytorch/pytorch:${PYTORCH_VERSION}-${CUDA_TAG}-devel AS build
ENV TORCH_CUDA_ARCH_LIST="8.0;9.0+PTX" \
    MAX_JOBS=8 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# --no-build-isolation compiles against the image's own torch (the extension's ABI must match the
# torch it is imported with), so the build requirements are installed here explicitly.
RUN pip install "setuptools>=69" wheel ninja pybind11
WORKDIR /src
# .dockerignore keeps only what the build needs (pyproject.toml, setup.py, csrc/, aal_k8s/, README.md).
COPY . .
RUN pip wheel --no-build-isolation --no-deps --wheel-dir /wheels . \
 && ls -l /wheels

# -- runtime ---------------------------------------------------------------------------------
FROM pytorch/pytorch:${PYTORCH_VERSION}-${CUDA_TAG}-runtime
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TORCH_HOME=/opt/torch \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/matplotlib
COPY --from=build /wheels /wheels
# torch (and torchvision) come from the base image: pip keeps them, installs the rest.
# The import check fails the build if either extension is missing or does not load against this
# torch (loading the CUDA one needs the CUDA runtime libraries, not a GPU).
RUN pip install /wheels/*.whl \
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
