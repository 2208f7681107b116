"""Build of rankdistill and its extension, rankdistill._C.

The C++ CPU kernels are always built. The CUDA kernels are built when torch is
a CUDA build and a CUDA toolkit is found; RANKDISTILL_WITH_CUDA=1 or 0 forces
either way. TORCH_CUDA_ARCH_LIST defaults to Hopper (9.0) when no GPU is
visible. Build against the installed torch: pip install --no-build-isolation .
"""

import glob
import os
import re
import sys

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:
    sys.exit(
        "rankdistill compiles against the PyTorch you have installed, and none was found.\n"
        "Install torch first, then build without isolation:\n"
        "    pip install torch\n"
        "    pip install --no-build-isolation .\n"
        "(or run `make test`, which does both in a virtual environment)"
    )


def _want_cuda():
    forced = os.environ.get("RANKDISTILL_WITH_CUDA")
    if forced is not None:
        if forced not in ("0", "1"):
            sys.exit(f"RANKDISTILL_WITH_CUDA must be 0 or 1, got {forced!r}")
        if forced == "1" and (torch.version.cuda is None or CUDA_HOME is None):
            sys.exit(
                "RANKDISTILL_WITH_CUDA=1 needs a CUDA build of torch "
                f"(this one: {torch.__version__}) and a CUDA toolkit (set CUDA_HOME)"
            )
        return forced == "1"
    return torch.version.cuda is not None and CUDA_HOME is not None


def _extension():
    root = os.path.dirname(os.path.abspath(__file__))
    cpp_sources = sorted(glob.glob(os.path.join(root, "csrc", "**", "*.cpp"), recursive=True))
    cuda_sources = sorted(glob.glob(os.path.join(root, "csrc", "**", "*.cu"), recursive=True))
    cxx_flags = ["-O3", "-std=c++20", "-fopenmp", "-fvisibility=hidden"]
    with_cuda = _want_cuda()
    if not with_cuda:
        print("rankdistill: building the CPU kernels only", file=sys.stderr)
        return CppExtension(
            "rankdistill._C",
            [os.path.relpath(s, root) for s in cpp_sources],
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
        )
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
    print(
        f"rankdistill: building the CPU and CUDA kernels (CUDA {torch.version.cuda}, "
        f"arch {os.environ.get('TORCH_CUDA_ARCH_LIST', 'of the visible GPU')})",
        file=sys.stderr,
    )
    return CUDAExtension(
        "rankdistill._C",
        [os.path.relpath(s, root) for s in cpp_sources + cuda_sources],
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++20", "--expt-relaxed-constexpr"]},
        extra_link_args=["-fopenmp"],
    )


def _version():
    # The version is written once, in rankdistill/__init__.py.
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "rankdistill", "__init__.py")) as f:
        return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


setup(
    name="rankdistill",
    version=_version(),
    description="Fast, exact ranking knowledge distillation for recommender systems",
    packages=find_packages(include=["rankdistill", "rankdistill.*"]),
    python_requires=">=3.10",
    install_requires=["torch", "numpy", "scipy", "tqdm", "matplotlib", "filelock"],
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension},
    entry_points={"console_scripts": ["rankdistill = rankdistill.cli:main"]},
)
