"""Leave-one-out split with fixed evaluation candidates (DESIGN.md section 3).

Per user with at least 3 interactions, one interaction is held out for test
and one for validation: chosen at random (by the seed), or, when the data has
timestamps, the latest for test and the second latest for validation (equal
times are ordered at random by the seed). Users with fewer than 3 interactions
stay in training only and are not evaluated. Each evaluated user also gets, for
validation and for test separately, ``n_candidates`` (499) distinct items it
never interacted with (in any part), the negatives of the sampled protocol.
Everything is fixed by the seed and can be saved to one ``.npz`` file.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import Interactions
from .errors import ConfigError, DataError
from .io import atomic_open, check_readable_file
from .unobserved import ObservedItems, sample_unobserved

__all__ = ["Split", "leave_one_out", "MIN_INTERACTIONS"]

MIN_INTERACTIONS = 3
_FORMAT_VERSION = 1
PARTS = ("valid", "test")


@dataclass(eq=False)
class Split:
    """``train`` holds the training interactions (same dense ids as the data);
    row e of the ``eval_*`` arrays belongs to user ``eval_users[e]``."""

    train: Interactions
    eval_users: np.ndarray
    valid_items: np.ndarray
    test_items: np.ndarray
    valid_candidates: np.ndarray
    test_candidates: np.ndarray
    seed: int
    data_fingerprint: str

    @property
    def n_users(self) -> int:
        return self.train.n_users

    @property
    def n_items(self) -> int:
        return self.train.n_items

    def targets(self, part: str) -> np.ndarray:
        _check_part(part)
        return self.valid_items if part == "valid" else self.test_items

    def candidates(self, part: str) -> np.ndarray:
        _check_part(part)
        return self.valid_candidates if part == "valid" else self.test_candidates

    def other_held_out(self, part: str) -> np.ndarray:
        """The held-out item of the other part: an observed item that is not a
        candidate when ranking ``part``."""
        return self.targets("test" if part == "valid" else "valid")

    @functools.cached_property
    def digest(self) -> str:
        """A digest of the split's content: the data, the seed, every held-out
        item and every candidate. Two splits with the same digest evaluate the
        same way; a split rebuilt elsewhere (or from a tampered file) with the
        same seed does not pass for the original unless it is identical."""
        digest = hashlib.sha256()
        digest.update(self.data_fingerprint.encode())
        digest.update(np.array([self.seed, self.n_users, self.n_items], dtype=np.int64).tobytes())
        for values in (self.eval_users, self.valid_items, self.test_items, self.valid_candidates,
                       self.test_candidates):
            digest.update(np.array(values.shape, dtype=np.int64).tobytes())
            digest.update(np.ascontiguousarray(values, dtype=np.int64).tobytes())
        return digest.hexdigest()[:32]

    def identity(self) -> dict[str, Any]:
        """What a model, a results file or a rankings cache records of the split
        it was made on (``check_identity`` compares it)."""
        return {"data_fingerprint": self.data_fingerprint, "split_seed": self.seed, "split_digest": self.digest}

    def check_identity(self, recorded: dict[str, Any], what: str) -> None:
        """A ``ConfigError`` unless ``recorded`` (a model's info, a results
        file) was made on this very split. ``what`` names the file in the message."""
        found = recorded.get("split_digest")
        if found is None:
            raise ConfigError(f"{what} does not record the digest of its split (written by an older rankdistill): "
                              "it cannot be checked against this split; retrain it")
        if recorded.get("data_fingerprint") not in (None, self.data_fingerprint):
            raise ConfigError(f"{what} was trained on another data set (data fingerprint "
                              f"{recorded['data_fingerprint']}, this split's data {self.data_fingerprint})")
        if found != self.digest:
            raise ConfigError(f"{what} was trained on another split (split digest {found}, this split {self.digest}): "
                              "its held-out items may have been training items; use the split it was trained on")

    def check_matches(self, data: Interactions, what: str = "the split file",
                      advice: str = "remove it or pass the data it was made from") -> None:
        """A ``DataError`` (``what`` names the split, ``advice`` the way out)
        unless the split was made from ``data``."""
        if data.fingerprint() != self.data_fingerprint:
            raise DataError(f"{what} was made from other data than {data.name} (fingerprint mismatch); {advice}")

    def save(self, path: str | os.PathLike) -> None:
        arrays = dict(
            version=np.int64(_FORMAT_VERSION),
            n_users=np.int64(self.n_users),
            n_items=np.int64(self.n_items),
            seed=np.int64(self.seed),
            data_fingerprint=np.str_(self.data_fingerprint),
            name=np.str_(self.train.name),
            train_users=self.train.users,
            train_items=self.train.items,
            user_ids=_storable(self.train.user_ids),
            item_ids=_storable(self.train.item_ids),
            eval_users=self.eval_users,
            valid_items=self.valid_items,
            test_items=self.test_items,
            # the candidates are most of the file: int32 halves it
            valid_candidates=self.valid_candidates.astype(_compact_dtype(self.n_items)),
            test_candidates=self.test_candidates.astype(_compact_dtype(self.n_items)),
        )
        if self.train.timestamps is not None:
            arrays["train_timestamps"] = self.train.timestamps
        with atomic_open(path, "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Split":
        path = Path(path)
        check_readable_file(path, "split file")
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {key: z[key] for key in z.files}
        except Exception as exc:  # a truncated or foreign file fails in zipfile, numpy or the OS, in many types
            raise DataError(f"{path}: not a readable split file ({type(exc).__name__}: {exc}); "
                            "it may be truncated: remove it or point --split at a complete one") from None
        required = ("version", "n_users", "n_items", "seed", "data_fingerprint", "train_users", "train_items",
                    "eval_users", "valid_items", "test_items", "valid_candidates", "test_candidates")
        missing = [key for key in required if key not in arrays]
        if missing:
            raise DataError(f"{path}: not a rankdistill split file (missing {', '.join(missing)})")
        ids = ("train_users", "train_items", "eval_users", "valid_items", "test_items", "valid_candidates",
               "test_candidates")
        not_integer = [key for key in (*ids, "version", "n_users", "n_items", "seed") if arrays[key].dtype.kind not in "iu"]
        if not_integer:
            raise DataError(f"{path}: not a rankdistill split file ({', '.join(not_integer)} not integers)")
        try:
            if int(arrays["version"]) != _FORMAT_VERSION:
                raise DataError(f"{path}: split format version {int(arrays['version'])}, expected {_FORMAT_VERSION}")
            train = Interactions(
                int(arrays["n_users"]), int(arrays["n_items"]), arrays["train_users"], arrays["train_items"],
                arrays.get("train_timestamps"), arrays.get("user_ids"), arrays.get("item_ids"),
                str(arrays.get("name", path.stem)),
            )
            split = cls(train, *(arrays[key].astype(np.int64) for key in ids[2:]), int(arrays["seed"]),
                        str(arrays["data_fingerprint"]))
        except DataError:
            raise
        except (TypeError, ValueError) as exc:  # e.g. an array where a number belongs
            raise DataError(f"{path}: malformed split file ({exc})") from None
        split._validate(path)
        return split

    def _validate(self, path: Path) -> None:
        n_eval = len(self.eval_users)
        for key in ("valid_items", "test_items"):
            if getattr(self, key).shape != (n_eval,):
                raise DataError(f"{path}: {key} must have one entry per evaluated user")
        for key in ("valid_candidates", "test_candidates"):
            if getattr(self, key).ndim != 2 or len(getattr(self, key)) != n_eval:
                raise DataError(f"{path}: {key} must have one row per evaluated user")
        ids = [self.valid_items, self.test_items, self.valid_candidates, self.test_candidates]
        if any(a.size and (a.min() < 0 or a.max() >= self.n_items) for a in ids):
            raise DataError(f"{path}: an item id is out of range [0, {self.n_items})")
        if n_eval and (self.eval_users.min() < 0 or self.eval_users.max() >= self.n_users):
            raise DataError(f"{path}: a user id is out of range [0, {self.n_users})")


def _check_part(part: str) -> None:
    if part not in PARTS:
        raise ValueError(f"part must be 'valid' or 'test', got {part!r}")


def _compact_dtype(n_items: int) -> type:
    return np.int32 if n_items <= np.iinfo(np.int32).max else np.int64


def _storable(ids: np.ndarray) -> np.ndarray:
    # .npz without pickle: ids that are not integers are stored as unicode.
    return ids if ids.dtype.kind in "iu" else ids.astype(str)


def leave_one_out(data: Interactions, *, seed: int = 0, n_candidates: int = 499) -> Split:
    """Split ``data`` (see the module docstring)."""
    if n_candidates < 1:
        raise DataError(f"n_candidates must be >= 1, got {n_candidates}")
    rng = np.random.default_rng(seed)
    tiebreak = rng.random(len(data))
    if data.timestamps is not None:
        order = np.lexsort((tiebreak, data.timestamps, data.users))
    else:
        order = np.lexsort((tiebreak, data.users))
    counts = data.user_counts()
    ends = np.cumsum(counts)  # one past each user's last row in `order`
    eval_users = np.flatnonzero(counts >= MIN_INTERACTIONS)
    if len(eval_users) == 0:
        raise DataError(f"{data.name}: no user has {MIN_INTERACTIONS} or more interactions to evaluate on")
    test_rows = order[ends[eval_users] - 1]
    valid_rows = order[ends[eval_users] - 2]
    train_mask = np.ones(len(data), dtype=bool)
    train_mask[test_rows] = False
    train_mask[valid_rows] = False

    observed = ObservedItems(data.users, data.items, data.n_users, data.n_items)
    generator = torch.Generator().manual_seed(seed)
    users = torch.from_numpy(eval_users)
    try:
        valid_candidates = sample_unobserved(observed, users, n_candidates, distinct=True, generator=generator)
        test_candidates = sample_unobserved(observed, users, n_candidates, distinct=True, generator=generator)
    except DataError as exc:
        raise DataError(f"{data.name}: {exc}; use fewer evaluation candidates") from None
    return Split(
        train=data.select(train_mask),
        eval_users=eval_users,
        valid_items=data.items[valid_rows],
        test_items=data.items[test_rows],
        valid_candidates=valid_candidates.numpy(),
        test_candidates=test_candidates.numpy(),
        seed=seed,
        data_fingerprint=data.fingerprint(),
    )
