"""Builds the fused-head extensions; all project metadata lives in pyproject.toml.

    pip install --no-build-isolation .        # or: python setup.py build_ext --inplace

* ``aal_k8s._C``      — always: operator schemas, CPU kernels, autocast rule (csrc/*.cpp).
* ``aal_k8s._C_cuda`` — when nvcc is found under CUDA_HOME (or /usr/local/cuda): CUDA kernels
  (csrc/cuda/*.cu). No GPU is needed to build it.

Environment:
    AAL_K8S_NO_CUDA=1        skip the CUDA extension even if nvcc is present
    AAL_K8S_NO_EXT=1         build no extension at all (pure-Python install; the reference is used)
    TORCH_CUDA_ARCH_LIST     defaults to "8.0;9.0+PTX" (A100, H100, PTX for newer GPUs)
    MAX_JOBS                 parallel compile jobs for ninja (torch's own knob)
    AAL_K8S_DEBUG=1          -O0 -g builds
"""

from __future__ import annotations

import glob
import os
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("csrc")


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _find_nvcc() -> tuple[str | None, str | None]:
    """(CUDA root, nvcc path) from CUDA_HOME/CUDA_PATH or /usr/local/cuda; never from PATH.

    An ``nvcc`` on PATH may be a wrapper script whose location says nothing about the toolkit
    root, which is what torch.utils.cpp_extension needs for headers and libraries.
    """
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    for root in roots:
        if root and os.path.isfile(os.path.join(root, "bin", "nvcc")):
            return os.path.realpath(root), os.path.join(root, "bin", "nvcc")
    return None, None


def _extensions():
    if _truthy("AAL_K8S_NO_EXT"):
        return [], {}

    cuda_root, nvcc = (None, None) if _truthy("AAL_K8S_NO_CUDA") else _find_nvcc()
    if nvcc is not None:
        # cpp_extension resolves the toolkit root once, at import; point it at the real one.
        os.environ["CUDA_HOME"] = cuda_root
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")

    import torch
    from torch.utils import cpp_extension as cx

    if nvcc is not None and cx.CUDA_HOME != cuda_root:  # imported earlier in this process
        cx.CUDA_HOME = cuda_root

    debug = _truthy("AAL_K8S_DEBUG")
    opt = ["-O0", "-g"] if debug else ["-O3"]
    # Py_LIMITED_API: the modules only need PyModule_Create, so one wheel serves all CPython 3.10+.
    limited_api = [("Py_LIMITED_API", "0x030A0000")]
    include_dirs = [os.path.join(HERE, CSRC)]

    cxx_flags = [*opt, "-Wno-psabi"]  # psabi: notes about vector-extension ABI, never crossed
    link_flags = []
    # at::parallel_for is a header template: without -fopenmp it silently runs serially. The
    # .so then binds to the libgomp torch has already loaded (same SONAME), not a second runtime.
    if sys.platform.startswith("linux") and "OpenMP" in torch.__config__.parallel_info():
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")

    exts = [
        cx.CppExtension(
            name="aal_k8s._C",
            sources=sorted(glob.glob(os.path.join(CSRC, "*.cpp"))),
            include_dirs=include_dirs,
            define_macros=limited_api,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
            py_limited_api=True,
        )
    ]

    if nvcc is not None:
        exts.append(
            cx.CUDAExtension(
                name="aal_k8s._C_cuda",
                sources=sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cu")))
                + sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cpp"))),
                include_dirs=include_dirs,
                define_macros=limited_api,
                extra_compile_args={
                    "cxx": [*opt, "-Wno-psabi"],
                    # No --use_fast_math: expf/log1pf must stay accurate for |z| >= 100.
                    "nvcc": [*opt, "-lineinfo", "--expt-relaxed-constexpr"],
                },
                py_limited_api=True,
            )
        )
    cuda_note = f"yes ({nvcc}, TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']})" if nvcc \
        else ("no (AAL_K8S_NO_CUDA)" if _truthy("AAL_K8S_NO_CUDA") else "no (nvcc not found)")
    print(f"aal-k8s: building aal_k8s._C; aal_k8s._C_cuda: {cuda_note}", file=sys.stderr)
    return exts, {"build_ext": cx.BuildExtension.with_options(use_ninja=True)}


def _wheel_options() -> dict:
    """Tag wheels abi3 (the modules use only the limited C API) when a bdist_wheel exists."""
    import importlib.util

    has_bdist_wheel = (
        importlib.util.find_spec("setuptools.command.bdist_wheel") is not None
        or importlib.util.find_spec("wheel") is not None
    )
    return {"bdist_wheel": {"py_limited_api": "cp310"}} if has_bdist_wheel else {}


ext_modules, cmdclass = _extensions()
options = _wheel_options() if ext_modules else {}

setup(ext_modules=ext_modules, cmdclass=cmdclass, options=options)
