"""rankdistill as a package: its metadata, the version written once, the sdist
without torch, the messages of a build without torch, of an extension built
against another torch and of a source folder that shadows the installed
package. (The sdist's list of C++/CUDA sources: tests/test_cli.py; the whole
sdist -> fresh venv -> install -> smoke path: .ci/sdist_smoke.sh.)"""

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest
import torch

import rankdistill
from rankdistill import _build, _C
from rankdistill.compare import Run, plot_curves
from rankdistill.errors import RankdistillError

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
BUILT = _build.read_build_info(_C.__file__)
PACKAGE = Path(rankdistill.__file__).resolve().parent  # the rankdistill under test (make test: this checkout's)


def python(*args, cwd, check=False):
    """A fresh interpreter (no PYTHONPATH from here), its output as text."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def last_error_line(result):
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and lines, (result.stdout, result.stderr)
    return lines[-1]


# --- metadata -------------------------------------------------------------


def test_the_version_is_written_once_and_read_without_importing():
    project = PYPROJECT["project"]
    assert project["dynamic"] == ["version"] and "version" not in project
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "rankdistill.__version__"}
    setup_py = (REPO / "setup.py").read_text()
    assert "version=" not in setup_py and "__version__ =" not in setup_py
    # setuptools reads it statically: torch unimportable, rankdistill never imported
    code = ("import sys; sys.modules['torch'] = None\n"
            "from setuptools.config.pyprojecttoml import read_configuration\n"
            "print(read_configuration('pyproject.toml')['project']['version'], 'rankdistill' in sys.modules)")
    out = python("-c", code, cwd=REPO, check=True).stdout.split()
    assert out == [rankdistill.__version__, "False"]
    assert importlib.metadata.version("rankdistill") == rankdistill.__version__


def test_metadata_a_pypi_user_expects():
    project = PYPROJECT["project"]
    assert project["name"] == "rankdistill" and project["readme"] == "README.md"
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"] and (REPO / "LICENSE").is_file()
    assert project["requires-python"] == ">=3.10" and project["description"]
    assert project["scripts"] == {"rankdistill": "rankdistill.cli:main"}
    dependencies = {re.split(r"[<>=!~ ]", d, maxsplit=1)[0]: d for d in project["dependencies"]}
    assert set(dependencies) == {"torch", "numpy", "scipy", "tqdm", "filelock", "tomli"}
    assert dependencies["tomli"].endswith("; python_version < '3.11'")  # tomllib before 3.11 (--config)
    assert dependencies["torch"] == "torch>=2.9" and all(">=" in d for d in dependencies.values())
    extras = project["optional-dependencies"]
    assert [d.split(">=")[0] for d in extras["plot"]] == ["matplotlib"]
    assert {"pytest", "hypothesis", "expecttest"} <= {d.split(">=")[0] for d in extras["test"]}
    # torch is deliberately no build requirement (the build must see the installed one)
    assert not any(r.startswith("torch") for r in PYPROJECT["build-system"]["requires"])


def test_matplotlib_is_optional_and_its_absence_is_said():
    # importing everything works without matplotlib...
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "import rankdistill, rankdistill.cli, rankdistill.compare, rankdistill.report; print('ok')")
    assert python("-c", code, cwd=REPO, check=True).stdout.split() == ["ok"]


def test_the_figure_without_matplotlib_names_the_extra(tmp_path, monkeypatch):
    # ...and the figure, the one thing that needs it, says what to install
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(RankdistillError, match=re.escape("pip install 'rankdistill[plot]'")):
        plot_curves(tmp_path / "curves.png", {"rrd": [Run("rrd", 0, {"history": []}, {})]})
    assert not (tmp_path / "curves.png").exists()


# --- building --------------------------------------------------------------

_NO_TORCH = "import sys; sys.modules['torch'] = None\n"


def _setup_py_without_torch(*argv, extra_path=None):
    code = (_NO_TORCH + (f"sys.path.append({extra_path!r})\n" if extra_path else "")
            + f"sys.argv = ['setup.py', *{list(argv)!r}]\n"
            + "exec(compile(open('setup.py').read(), 'setup.py', 'exec'), "
            + f"{{'__name__': '__main__', '__file__': {str(REPO / 'setup.py')!r}}})")
    return python("-c", code, cwd=REPO)


@pytest.mark.parametrize("isolated", [False, True])
def test_building_without_torch_says_what_to_run(tmp_path, isolated):
    env_dir = "/tmp/pip-build-env-abc123"
    result = _setup_py_without_torch("build_ext", "-b", str(tmp_path), "-t", str(tmp_path),
                                     extra_path=f"{env_dir}/overlay/lib/python3/site-packages" if isolated else None)
    assert result.returncode == 1, result.stderr
    assert "pip install --no-build-isolation rankdistill" in result.stderr
    if isolated:
        assert f"isolated build environment ({env_dir}),\nwhere the torch you have installed is invisible" \
            in result.stderr
    else:
        assert f"No torch was found in this Python ({sys.executable})" in result.stderr
        assert "isolated" not in result.stderr


def test_the_sdist_builds_without_torch(tmp_path):
    # as `python -m build --sdist` does it, in an isolated environment without torch
    result = _setup_py_without_torch("-q", "egg_info", "--egg-base", str(tmp_path), "sdist", "-d", str(tmp_path))
    assert result.returncode == 0, result.stderr
    (archive,) = tmp_path.glob(f"rankdistill-{rankdistill.__version__}.tar.gz")
    with tarfile.open(archive) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
        pkg_info = tar.extractfile(f"rankdistill-{rankdistill.__version__}/PKG-INFO").read().decode()
    sources = {str(p.relative_to(REPO)) for folder in ("csrc", "rankdistill", "docs", "examples", "tests")
               for p in (REPO / folder).rglob("*")
               if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".so", ".pyc")}
    assert {"csrc/registration.cpp", "csrc/common/checks.h", "rankdistill/_build.py"} <= sources <= names
    assert {"LICENSE", "README.md", "pyproject.toml", "setup.py", "MANIFEST.in", "Makefile"} <= names
    assert not [n for n in names if n.endswith((".so", ".o", ".pyc")) or "__pycache__" in n]
    for line in ("License-Expression: MIT", "Requires-Python: >=3.10", "Requires-Dist: torch>=2.9",
                 "Provides-Extra: plot", 'Requires-Dist: matplotlib>=3.7; extra == "plot"',
                 f"Version: {rankdistill.__version__}"):
        assert line in pkg_info.splitlines(), line


# --- the extension and the torch it was built against ---------------------------


def test_the_extension_records_the_torch_it_was_built_against():
    assert BUILT is not None and _C.build_info == f"rankdistill-build-info torch={BUILT.torch} cuda={BUILT.cuda}\n"
    assert BUILT.torch == str(torch.__version__)
    assert BUILT.cuda in ("none", torch.version.cuda)


def test_which_torch_an_extension_loads_under():
    cpu, cuda = _build.BuildInfo("2.14.1+cu130", "none"), _build.BuildInfo("2.14.1+cu130", "13.0")
    assert _build.compatible(cpu, "2.14.1+cu130") and _build.compatible(cpu, "2.14.1+cpu")
    assert _build.compatible(cpu, "2.14.1")
    assert not _build.compatible(cpu, "2.14.0") and not _build.compatible(cpu, "2.13.0+cpu")
    assert _build.compatible(cuda, "2.14.1+cu130")
    assert not _build.compatible(cuda, "2.14.1+cpu") and not _build.compatible(cuda, "2.14.1+cu128")
    assert not _build.compatible(_build.BuildInfo("2.15.0.dev20260101+cpu", "none"), "2.15.0.dev20260102+cpu")
    assert _build.compatible(_build.BuildInfo("2.14.1", "unknown"), "2.14.1+cu130")


def _import_under(version):
    code = f"import torch\ntorch.__version__ = {version!r}\nimport rankdistill\nprint('imported')"
    return python("-c", code, cwd=REPO)


def test_importing_under_another_torch_release_says_rebuild():
    result = _import_under("2.13.0")
    assert last_error_line(result) == (
        f"ImportError: rankdistill was built against torch {BUILT.torch} and this is torch 2.13.0: the C++ ABI of "
        f"PyTorch custom ops is not stable across torch releases; rebuild it against this torch: "
        f"{_build.rebuild_command()}")
    if PACKAGE == REPO / "rankdistill":  # this checkout's (editable) build
        assert _build.rebuild_command() == f"pip install --no-build-isolation -e {REPO}"


def test_importing_under_another_build_of_the_same_release():
    other = _build.release(BUILT.torch) + ("+cu130" if BUILT.torch.endswith("+cpu") else "+cpu")
    result = _import_under(other)
    if BUILT.cuda == "none":  # CPU kernels only: any build of the release
        assert result.returncode == 0 and result.stdout.split() == ["imported"], result.stderr
    else:  # CUDA kernels: that very build
        assert last_error_line(result) == (
            f"ImportError: rankdistill was built against torch {BUILT.torch} and this is torch {other}: its CUDA "
            f"kernels (CUDA {BUILT.cuda}) need that very torch build; rebuild it against this torch: "
            f"{_build.rebuild_command()}")


def _copy_package(dest, with_extension):
    shutil.copytree(PACKAGE, dest / "rankdistill",
                    ignore=shutil.ignore_patterns("__pycache__", *([] if with_extension else ["_C*"])))
    return dest / "rankdistill"


def test_an_installed_extension_built_for_another_torch(tmp_path):
    """The recorded version is read from the file, not from a loaded module: an
    installed copy whose extension says torch 9.x is refused before loading."""
    package = _copy_package(tmp_path, with_extension=True)
    (so,) = package.glob("_C*.so")
    data = so.read_bytes()
    recorded = f"rankdistill-build-info torch={BUILT.torch} ".encode()
    assert data.count(recorded) == 1
    patched_version = "9" + BUILT.torch[1:]
    so.write_bytes(data.replace(recorded, f"rankdistill-build-info torch={patched_version} ".encode()))
    assert _build.read_build_info(so) == (patched_version, BUILT.cuda)
    line = last_error_line(python("-c", "import rankdistill", cwd=tmp_path))
    assert line.startswith(f"ImportError: rankdistill was built against torch {patched_version} and this is torch "
                           f"{torch.__version__}: the C++ ABI of PyTorch custom ops is not stable across torch "
                           "releases; rebuild it against this torch: pip install --no-build-isolation --no-binary "
                           f"rankdistill --no-cache-dir --force-reinstall --no-deps rankdistill==")


def test_an_extension_that_records_nothing(tmp_path):
    package = _copy_package(tmp_path, with_extension=True)
    (so,) = package.glob("_C*.so")
    so.write_bytes(so.read_bytes().replace(b"rankdistill-build-info", b"rankdistill-build-xxxx"))
    line = last_error_line(python("-c", "import rankdistill", cwd=tmp_path))
    assert line.startswith(f"ImportError: {so} does not record the torch it was built against")


# --- a source folder without its extension ------------------------------------


def _source_folder(tmp_path):
    """A checkout (or unpacked sdist) whose extension is not built."""
    _copy_package(tmp_path, with_extension=False)
    shutil.copy(REPO / "setup.py", tmp_path / "setup.py")
    (tmp_path / "csrc").mkdir()
    return tmp_path


def test_a_source_folder_that_shadows_the_installed_package(tmp_path):
    """Before: ImportError: cannot import name '_C' from partially initialized
    module 'rankdistill'. Here the installed rankdistill is this checkout's
    (editable); after `pip install .` it is site-packages' (.ci/sdist_smoke.sh)."""
    folder = _source_folder(tmp_path)
    result = python("-m", "rankdistill", "--version", cwd=folder)
    assert last_error_line(result) == (
        f"ImportError: rankdistill's source folder {folder / 'rankdistill'} shadows the installed rankdistill "
        f"({PACKAGE}): {folder} comes first on sys.path (python -m and python -c put the current "
        f"directory there), and the source folder has no built extension (rankdistill._C). Run from another "
        f"directory, or build the extension in place: pip install --no-build-isolation -e {folder}")
    # from elsewhere, the installed package runs
    assert python("-m", "rankdistill", "--version", cwd=tmp_path.parent, check=True).stdout.strip() \
        == f"rankdistill {rankdistill.__version__}"


def test_a_source_folder_with_nothing_installed(tmp_path):
    folder = _source_folder(tmp_path)
    # without the editable install's finder (this checkout's), the folder put first on sys.path by hand
    code = f"import sys; sys.meta_path[:] = [m for m in sys.meta_path if 'editable' not in repr(m)]; " \
           f"sys.path.insert(0, {str(folder)!r}); import rankdistill"
    line = last_error_line(python("-c", code, cwd=tmp_path.parent))
    assert line == (f"ImportError: rankdistill's extension (rankdistill._C) is not built in the source folder "
                    f"{folder / 'rankdistill'}: build it with pip install --no-build-isolation -e {folder} "
                    "(or make build)")


def test_an_install_without_its_extension(tmp_path):
    package = _copy_package(tmp_path, with_extension=False)
    (package / "_C.cpython-399-x86_64-linux-gnu.so").write_bytes(b"")  # one for another Python
    line = last_error_line(python("-c", "import rankdistill", cwd=tmp_path))
    assert line.startswith(f"ImportError: rankdistill in {package} has no compiled extension rankdistill._C for "
                           "this Python (_C")
    assert "(there is _C.cpython-399-x86_64-linux-gnu.so, built for another Python): the install is incomplete; " \
           "reinstall it: pip install --no-build-isolation --no-binary rankdistill" in line
