"""The checks ``import rankdistill`` makes before loading its extension, rankdistill._C.

- The extension must be there. Run from a checkout whose extension is not built
  (say after a non-editable install), ``import rankdistill`` finds the source
  folder first on sys.path, which shadows the installed package: say so,
  instead of "cannot import name '_C' from partially initialized module".
- The extension must have been built against this torch. The C++ ABI of
  PyTorch custom ops is not stable across torch releases, so a build made for
  another torch either fails to load (a missing symbol) or, worse, loads and
  misbehaves. setup.py records ``torch.__version__`` and the CUDA version of the
  CUDA kernels in the extension (csrc/registration.cpp, the line
  ``rankdistill-build-info torch=... cuda=...``), which is read here from the file
  itself, before loading it. The rule: the same torch release (the version
  without its local label: 2.14.1+cu130 and 2.14.1+cpu are one release, 2.14.0
  and 2.14.1 or two nightlies are not) and, when the extension has CUDA kernels,
  the same build of it too (local label included: the kernels link against that
  torch's CUDA libraries, which a CPU-only or other-CUDA torch does not have).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import mmap
import os
import shlex
import sys
from pathlib import Path
from typing import NamedTuple, Optional

_MARKER = b"rankdistill-build-info torch="
_PACKAGE = Path(__file__).resolve().parent


class BuildInfo(NamedTuple):
    torch: str  # torch.__version__ at build time, e.g. "2.14.1+cu130"
    cuda: str  # CUDA version of the CUDA kernels; "none": CPU kernels only; "unknown": not built by setup.py


def read_build_info(path: str | Path) -> Optional[BuildInfo]:
    """What the extension at ``path`` was built against, read without loading
    it; None when it records nothing (built before the record existed)."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        start = data.find(_MARKER)
        if start < 0:
            return None
        end = data.find(b"\n", start, start + 256)
        line = data[start:end if end >= 0 else start].decode("ascii", "replace")
    fields = dict(part.split("=", 1) for part in line.split()[1:] if "=" in part)
    if "torch" not in fields or "cuda" not in fields:
        return None
    return BuildInfo(fields["torch"], fields["cuda"])


def release(version: str) -> str:
    """The version without its local label: "2.14.1+cu130" -> "2.14.1"."""
    return str(version).split("+", 1)[0]


def compatible(built: BuildInfo, torch_version: str) -> bool:
    """Whether an extension built as ``built`` may be loaded under torch ``torch_version``."""
    if built.cuda not in ("none", "unknown"):
        return built.torch == str(torch_version)
    return release(built.torch) == release(torch_version)


def _checkout() -> Optional[Path]:
    """The source checkout (or unpacked sdist) this package folder lies in, if any."""
    root = _PACKAGE.parent
    return root if (root / "setup.py").is_file() and (root / "csrc").is_dir() else None


def rebuild_command() -> str:
    """What rebuilds rankdistill's extension against the torch now installed."""
    checkout = _checkout()
    if checkout is not None:
        return f"pip install --no-build-isolation -e {shlex.quote(str(checkout))}"
    try:
        from importlib.metadata import version

        pinned = f"rankdistill=={version('rankdistill')}"
    except Exception:  # metadata missing or unreadable: any version
        pinned = "rankdistill"
    return (f"pip install --no-build-isolation --no-binary rankdistill --no-cache-dir --force-reinstall --no-deps "
            f"{pinned} (or the path of its sdist or checkout in place of {pinned})")


def _installed_elsewhere(checkout: Path) -> Optional[Path]:
    """The folder of a rankdistill that imports when ``checkout`` is not on
    sys.path (installed in site-packages, or an editable install's finder)."""
    here = checkout.resolve()
    rest = [p for p in sys.path if Path(p or ".").resolve() != here]
    for finder in sys.meta_path:
        try:
            if finder is importlib.machinery.PathFinder:
                spec = finder.find_spec("rankdistill", rest)
            elif hasattr(finder, "find_spec"):
                spec = finder.find_spec("rankdistill", None)
            else:
                continue
        except Exception:  # a third-party finder's trouble is no reason to hide the message
            continue
        if spec is not None and spec.origin and Path(spec.origin).is_file():
            folder = Path(spec.origin).resolve().parent
            if folder != _PACKAGE:
                return folder
    return None


def _missing_extension() -> ImportError:
    suffixes = ", ".join(importlib.machinery.EXTENSION_SUFFIXES[:1])
    others = sorted(p.name for p in _PACKAGE.glob("_C*") if p.suffix in (".so", ".pyd"))
    built_for = f" (there is {', '.join(others)}, built for another Python)" if others else ""
    checkout = _checkout()
    if checkout is None:
        return ImportError(
            f"rankdistill in {_PACKAGE} has no compiled extension rankdistill._C for this Python "
            f"(_C{suffixes}){built_for}: the install is incomplete; reinstall it: {rebuild_command()}",
            name="rankdistill._C")
    # A source folder: is another rankdistill installed, which this folder shadows?
    installed = _installed_elsewhere(checkout)
    if installed is not None:
        return ImportError(
            f"rankdistill's source folder {_PACKAGE} shadows the installed rankdistill "
            f"({installed}): {checkout} comes first on sys.path (python -m and python -c put "
            f"the current directory there), and the source folder has no built extension (rankdistill._C)"
            f"{built_for}. Run from another directory, or build the extension in place: "
            f"pip install --no-build-isolation -e {shlex.quote(str(checkout))}",
            name="rankdistill._C")
    return ImportError(
        f"rankdistill's extension (rankdistill._C) is not built in the source folder {_PACKAGE}{built_for}: "
        f"build it with pip install --no-build-isolation -e {shlex.quote(str(checkout))} (or make build)",
        name="rankdistill._C")


def check_extension() -> None:
    """Raise ImportError, saying what to do, unless rankdistill._C is there
    and was built against the torch now installed."""
    spec = importlib.util.find_spec("rankdistill._C")
    # Only this package's own folder counts: an editable install's finder
    # would hand a source folder that shadows it the other checkout's _C.
    folders = {os.path.abspath(p) for p in sys.modules["rankdistill"].__path__}
    if spec is None or not spec.origin or not os.path.isfile(spec.origin) \
            or os.path.abspath(os.path.dirname(spec.origin)) not in folders:
        raise _missing_extension()
    import torch

    running = str(torch.__version__)
    built = read_build_info(spec.origin)
    if built is None:
        raise ImportError(
            f"{spec.origin} does not record the torch it was built against (built before rankdistill recorded it): "
            f"rebuild it against this torch ({running}): {rebuild_command()}", name="rankdistill._C")
    if not compatible(built, running):
        same_release = release(built.torch) == release(running)
        why = (f"its CUDA kernels (CUDA {built.cuda}) need that very torch build" if same_release else
               "the C++ ABI of PyTorch custom ops is not stable across torch releases")
        raise ImportError(
            f"rankdistill was built against torch {built.torch} and this is torch {running}: {why}; "
            f"rebuild it against this torch: {rebuild_command()}", name="rankdistill._C")
