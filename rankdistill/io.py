"""The files rankdistill writes: atomic, checksummed, one writer per run folder.

- Everything rankdistill writes (splits, checkpoints, results) goes through
  :func:`atomic_open`: the content goes to a temporary file in the destination
  folder, which then replaces the destination with ``os.replace`` (atomic on
  POSIX and Windows when both are on the same file system, hence the same
  folder). A process killed mid-write leaves only a hidden ``.NAME.*.tmp``,
  which :func:`remove_stale_temporaries` clears at the next start.
- Torch files (checkpoints, models, rankings caches) carry a SHA-256 of their
  tensors (:func:`torch_save` / :func:`torch_load`), so a corrupted or edited
  file is refused instead of half-trusted.
- :func:`run_folder_lock` holds an exclusive lock on a run folder for the life
  of a run: a second process given the same folder is refused, with the first
  one named.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import functools
import hashlib
import json
import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

import filelock
import torch

from .errors import ConfigError, DataError


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file for writing that replaces ``path`` on success.

    On an exception the temporary file is removed and ``path`` is untouched.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open supports modes 'wb' and 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def check_readable_file(path: Path, what: str) -> None:
    """An ``OSError`` naming ``what`` unless ``path`` is a regular file."""
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, f"no such {what}", str(path))
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"expected a {what}, got a directory", str(path))
    if not path.is_file():
        raise OSError(errno.EINVAL, f"expected a {what}, got a special file", str(path))


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (identifies a teacher checkpoint). A command
    asks for the same teacher's digest once per run of a comparison: it is
    computed once per version of the file (its path, size and mtime)."""
    stat = os.stat(path)
    return _file_sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_CHECKSUM = "tensor_sha256"


def tensor_checksum(obj: Any) -> str:
    """SHA-256 over every tensor in a nested structure of dicts, lists and
    tuples (dtype, shape and bytes, in a fixed traversal order)."""
    digest = hashlib.sha256()

    def visit(value: Any, where: str) -> None:
        if isinstance(value, torch.Tensor):
            flat = value.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{where}:{value.dtype}:{tuple(value.shape)};".encode())
            if flat.numel():
                digest.update(flat.view(torch.uint8).numpy())
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                visit(value[key], f"{where}/{key}")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                visit(item, f"{where}/{i}")

    visit(obj, "")
    return digest.hexdigest()


def torch_save(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """``torch.save`` of a dict, atomically, with the checksum of its tensors."""
    with atomic_open(path, "wb") as f:
        torch.save({**payload, _CHECKSUM: tensor_checksum(payload)}, f)


def torch_load(path: str | os.PathLike, what: str, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """A dict written by :func:`torch_save`, its checksum verified; ``what``
    names the kind of file in the errors ("model file", ...). Loaded with
    ``weights_only=True``: nothing in the file is executed."""
    path = Path(path)
    check_readable_file(path, what)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception:  # torch raises many types for a file that is not a checkpoint
        raise DataError(f"{path}: not a readable {what}") from None
    if not isinstance(payload, dict):
        raise DataError(f"{path}: not a rankdistill {what}")
    recorded = payload.pop(_CHECKSUM, None)
    if recorded is None:
        raise DataError(f"{path}: not a rankdistill {what}, or written by a version without checksums")
    if recorded != tensor_checksum(payload):
        raise DataError(f"{path}: the checksum of its tensors does not match: the file is corrupted or was edited")
    return payload


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove what :func:`atomic_open` left in ``folder`` when its process was
    killed mid-write (call only while holding the folder's lock)."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed.append(tmp)
    return removed


LOCK_FILE = ".rankdistill.lock"
_OWNER_FILE = ".rankdistill.owner"


@contextlib.contextmanager
def run_folder_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on the run folder ``folder`` (created if needed)
    until the block ends; a ``ConfigError`` naming the holder if another
    process has it. Leftover temporaries of a killed run are removed. If the
    block fails, the lock file (and the folder, if empty) are removed when
    they were created here: a refused command leaves nothing behind."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} is a file, not a run folder")
    created_folder = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    created_lock = not (folder / LOCK_FILE).exists()
    lock = filelock.FileLock(str(folder / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        raise ConfigError(f"{folder} is in use by another rankdistill process ({_owner(folder)}); "
                          "wait for it to finish or use another --out") from None
    failed = False
    try:
        (folder / _OWNER_FILE).write_text(json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
            "started": datetime.datetime.now().isoformat(timespec="seconds")}))
        remove_stale_temporaries(folder)
        yield folder
    except BaseException:
        failed = True
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            (folder / _OWNER_FILE).unlink()
        if failed and created_lock:
            with contextlib.suppress(FileNotFoundError):
                (folder / LOCK_FILE).unlink()
        lock.release()
        if failed and created_folder:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty


def _owner(folder: Path) -> str:
    try:
        owner = json.loads((folder / _OWNER_FILE).read_text())
        return f"pid {owner['pid']} on {owner['host']}, started {owner['started']}: {owner['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "owner unknown"
