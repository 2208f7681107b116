"""Build of rankdistill's extension, rankdistill._C (the metadata is in pyproject.toml).

The C++ CPU kernels are always built. The CUDA kernels are built when torch is
a CUDA build and a CUDA toolkit is found; RANKDISTILL_WITH_CUDA=1 or 0 forces
either way. TORCH_CUDA_ARCH_LIST defaults to Hopper (9.0) when no GPU is
visible. Build against the installed torch: pip install --no-build-isolation .

The extension records the torch it was compiled against (csrc/registration.cpp);
`import rankdistill` refuses a build made for another torch (rankdistill/_build.py).
"""

import glob
import os
import re
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:
    torch = None


def _isolated_build_env():
    """The folder of the isolated build environment this build runs in, if any:
    pip puts its own on sys.path (/tmp/pip-build-env-*), `python -m build` runs
    in a fresh virtual environment (/tmp/build-env-*)."""
    for path in [sys.prefix, *sys.path]:
        match = re.search(r"^(.*?[/\\](?:pip-build-env-|build-env-)[^/\\]+)", path or "")
        if match:
            return match.group(1)
    return None


def _no_torch_message():
    isolated = _isolated_build_env()
    if isolated:
        where = (f"This build runs in an isolated build environment ({isolated}),\n"
                 "where the torch you have installed is invisible. (torch is deliberately no build\n"
                 "requirement: an extension built against a torch downloaded for the build would not\n"
                 "load under yours.)")
    else:
        where = f"No torch was found in this Python ({sys.executable})."
    return (
        "rankdistill compiles its C++/CUDA extension against the PyTorch you have installed.\n"
        f"{where}\n"
        "Install torch and the build tools first, then build without isolation:\n"
        '    pip install torch "setuptools>=77" wheel ninja\n'
        "    pip install --no-build-isolation rankdistill      (or: the sdist's path, or . in a checkout)\n"
        "(in a checkout, `make test` does both in a virtual environment)"
    )


class _NeedsTorch(build_ext):
    """Without torch, everything that needs no compiler still works (the sdist,
    the metadata); building the extension stops with what to run."""

    def run(self):
        sys.exit(_no_torch_message())


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


def _build_info_macros(with_cuda):
    """The torch (and CUDA) this build compiles against, recorded in the
    extension (csrc/registration.cpp) and checked by `import rankdistill`."""
    version = str(torch.__version__)
    cuda = torch.version.cuda if with_cuda else "none"
    for value in (version, cuda):
        # passed as a string literal on the compiler's command line: no quotes, spaces or backslashes
        if not re.fullmatch(r"[0-9A-Za-z.+_-]+", value):
            sys.exit(f"rankdistill: cannot record the unusual torch/CUDA version {value!r} in the build")
    return [("RANKDISTILL_TORCH_VERSION", f'"{version}"'), ("RANKDISTILL_CUDA_VERSION", f'"{cuda}"')]


def _sources(*patterns):
    return sorted(os.path.relpath(path, ROOT) for pattern in patterns
                  for path in glob.glob(os.path.join(ROOT, "csrc", "**", pattern), recursive=True))


def _extension():
    cxx_flags = ["-O3", "-std=c++20", "-fopenmp", "-fvisibility=hidden"]
    with_cuda = _want_cuda()
    macros = _build_info_macros(with_cuda)
    if not with_cuda:
        print(f"rankdistill: building the CPU kernels only, against torch {torch.__version__}", file=sys.stderr)
        return CppExtension(
            "rankdistill._C",
            _sources("*.cpp"),
            define_macros=macros,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
        )
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
    print(
        f"rankdistill: building the CPU and CUDA kernels against torch {torch.__version__} (CUDA {torch.version.cuda}, "
        f"arch {os.environ.get('TORCH_CUDA_ARCH_LIST', 'of the visible GPU')})",
        file=sys.stderr,
    )
    return CUDAExtension(
        "rankdistill._C",
        _sources("*.cpp", "*.cu"),
        define_macros=macros,
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++20", "--expt-relaxed-constexpr"]},
        extra_link_args=["-fopenmp"],
    )


if torch is None:
    # A placeholder: the wheel is still platform-specific and its build_ext stops with what to run.
    setup(ext_modules=[Extension("rankdistill._C", _sources("*.cpp"))], cmdclass={"build_ext": _NeedsTorch})
else:
    setup(ext_modules=[_extension()], cmdclass={"build_ext": BuildExtension})
