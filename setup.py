"""Builds resnet_fast and its extension resnet_fast._C (ninja).

CUDAExtension where nvcc and a CUDA build of torch are both present (sm_80 and sm_90 by default,
TORCH_CUDA_ARCH_LIST overrides), CppExtension otherwise. RESNET_FAST_SKIP_EXTENSION=1 builds the
pure-Python package only (the package then JIT-builds the CPU kernels or falls back to PyTorch).
"""
import glob
import os
import platform

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _extensions():
    if os.environ.get("RESNET_FAST_SKIP_EXTENSION") == "1":
        return [], {}
    import torch
    from torch.utils import cpp_extension

    cpp_sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    cu_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    cxx_flags = ["-O3", "-fopenmp"]  # at::parallel_for is OpenMP: without the flag it runs serially
    if platform.machine() in ("x86_64", "AMD64"):
        # at::vec picks its AVX2 specialisations from these macros (header-only templates).
        cxx_flags += ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    with_cuda = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None and bool(cu_sources)
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        include_dirs = []
        # pip's CUDA wheels ship headers the toolkit may lack (cuBLAS, cuSPARSE, ...).
        nvidia = os.path.join(os.path.dirname(torch.__file__), os.pardir, "nvidia", "cu13", "include")
        if os.path.isdir(nvidia):
            include_dirs.append(os.path.abspath(nvidia))
        ext = cpp_extension.CUDAExtension(
            "resnet_fast._C",
            cpp_sources + cu_sources,
            include_dirs=include_dirs,
            define_macros=[("RESNET_FAST_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},  # no fast math: its flush-to-zero would make fp32 sums differ from torch's add
            extra_link_args=["-fopenmp"],
        )
    else:
        ext = cpp_extension.CppExtension("resnet_fast._C", cpp_sources, extra_compile_args=cxx_flags, extra_link_args=["-fopenmp"])
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    name="resnet_fast",
    version="0.1.0",
    description="A drop-in, faster ResNet family for PyTorch: fused conv+BN+ReLU(+residual) kernels",
    packages=["resnet_fast", "resnet_fast.kernels"],
    package_dir={"resnet_fast": "resnet_fast", "resnet_fast.kernels": "kernels"},
    python_requires=">=3.9",
    install_requires=["torch"],
    extras_require={"torchvision": ["torchvision"], "test": ["pytest", "numpy"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
