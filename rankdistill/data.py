"""Implicit-feedback data: the container, the loaders, k-core filtering and the
embedded synthetic data set.

Every loader returns *dense* ids (users ``0..n_users-1``, items
``0..n_items-1``, only those with at least one interaction) and keeps the ids of
the file in ``user_ids`` / ``item_ids``. Interactions are a set: a repeated
(user, item) pair is kept once (with its latest timestamp).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import ConfigError, DataError

__all__ = [
    "FORMATS",
    "DataError",
    "Interactions",
    "detect_format",
    "kcore",
    "load",
    "load_delimited",
    "load_users_dat",
    "synthetic",
]

_INT_TOKEN = re.compile(r"-?[0-9]+")


@dataclass(eq=False)
class Interactions:
    """A set of (user, item) interactions with dense ids.

    ``users[k], items[k]`` is the k-th interaction (int64); ``timestamps[k]`` its
    time (float64) when the source has times. ``user_ids[u]`` / ``item_ids[i]``
    are the ids the source file used for dense user ``u`` / item ``i``.
    """

    n_users: int
    n_items: int
    users: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray | None = None
    user_ids: np.ndarray | None = None
    item_ids: np.ndarray | None = None
    name: str = "interactions"

    def __post_init__(self) -> None:
        self.n_users = int(self.n_users)
        self.n_items = int(self.n_items)
        if self.n_users <= 0 or self.n_items <= 0:
            raise DataError(
                f"{self.name}: a data set needs at least one user and one item "
                f"(got {self.n_users} users, {self.n_items} items)"
            )
        self.users = np.ascontiguousarray(self.users, dtype=np.int64)
        self.items = np.ascontiguousarray(self.items, dtype=np.int64)
        if self.users.ndim != 1 or self.users.shape != self.items.shape:
            raise DataError(f"{self.name}: users and items must be 1-D arrays of equal length")
        if len(self.users) == 0:
            raise DataError(f"{self.name}: the data set has no interactions")
        for label, ids, n in (("user", self.users, self.n_users), ("item", self.items, self.n_items)):
            if ids.min() < 0 or ids.max() >= n:
                raise DataError(f"{self.name}: {label} ids must lie in [0, {n}), got [{ids.min()}, {ids.max()}]")
        if self.timestamps is not None:
            self.timestamps = np.ascontiguousarray(self.timestamps, dtype=np.float64)
            if self.timestamps.shape != self.users.shape:
                raise DataError(f"{self.name}: timestamps must have one entry per interaction")
        if len(np.unique(self.keys())) != len(self.users):
            raise DataError(f"{self.name}: repeated (user, item) pairs")
        self.user_ids = _id_map(self.user_ids, self.n_users, "user_ids", self.name)
        self.item_ids = _id_map(self.item_ids, self.n_items, "item_ids", self.name)

    def __len__(self) -> int:
        return len(self.users)

    def __repr__(self) -> str:
        times = ", timestamps" if self.timestamps is not None else ""
        return (
            f"Interactions({self.name!r}: {self.n_users} users, {self.n_items} items, "
            f"{len(self)} interactions{times})"
        )

    def keys(self) -> np.ndarray:
        """``user * n_items + item`` for every interaction (unique per pair)."""
        return self.users * self.n_items + self.items

    def user_counts(self) -> np.ndarray:
        return np.bincount(self.users, minlength=self.n_users)

    def item_counts(self) -> np.ndarray:
        return np.bincount(self.items, minlength=self.n_items)

    def to_csr(self, by: str = "user") -> tuple[np.ndarray, np.ndarray]:
        """``(indptr [n_users+1], indices)``: user u's items, ascending, are
        ``indices[indptr[u]:indptr[u+1]]``; ``by="item"``: each item's users."""
        if by == "user":
            rows, cols, n_rows, n_cols = self.users, self.items, self.n_users, self.n_items
        elif by == "item":
            rows, cols, n_rows, n_cols = self.items, self.users, self.n_items, self.n_users
        else:
            raise ValueError(f"by must be 'user' or 'item', got {by!r}")
        order = np.argsort(rows.astype(np.int64) * n_cols + cols, kind="stable")
        indptr = np.zeros(n_rows + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
        return indptr, cols[order]

    def select(self, mask: np.ndarray) -> "Interactions":
        """The interactions where ``mask`` is true, in the same id space."""
        return Interactions(
            self.n_users,
            self.n_items,
            self.users[mask],
            self.items[mask],
            None if self.timestamps is None else self.timestamps[mask],
            self.user_ids,
            self.item_ids,
            self.name,
        )

    def reindexed(self) -> "Interactions":
        """Drop users and items without interactions; ids become dense again and
        ``user_ids`` / ``item_ids`` still give the source's ids."""
        kept_users, users = np.unique(self.users, return_inverse=True)
        kept_items, items = np.unique(self.items, return_inverse=True)
        return Interactions(
            len(kept_users),
            len(kept_items),
            users,
            items,
            self.timestamps,
            self.user_ids[kept_users],
            self.item_ids[kept_items],
            self.name,
        )

    def fingerprint(self) -> str:
        """A digest of the interaction set (order-independent), used to check that
        a split file belongs to the data it is loaded with."""
        digest = hashlib.sha256()
        digest.update(np.array([self.n_users, self.n_items], dtype=np.int64).tobytes())
        digest.update(np.sort(self.keys()).tobytes())
        return digest.hexdigest()[:32]


def _id_map(ids: np.ndarray | None, n: int, label: str, name: str) -> np.ndarray:
    if ids is None:
        return np.arange(n, dtype=np.int64)
    ids = np.asarray(ids)
    if ids.shape != (n,):
        raise DataError(f"{name}: {label} must have {n} entries, got shape {ids.shape}")
    return ids


def _unique_pairs(
    users: np.ndarray, items: np.ndarray, timestamps: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Keep one row per (user, item); with timestamps, the latest one."""
    n_items = int(items.max()) + 1
    keys = users * n_items + items
    # Sorting by (key, time) and keeping each key's last row keeps its latest time.
    order = np.lexsort((timestamps, keys)) if timestamps is not None else np.argsort(keys, kind="stable")
    keys = keys[order]
    last = np.ones(len(keys), dtype=bool)
    last[:-1] = keys[1:] != keys[:-1]
    rows = order[last]
    return users[rows], items[rows], None if timestamps is None else timestamps[rows]


def _check_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, "no such data file", str(path))
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "expected a data file, got a directory", str(path))
    return path


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of a UTF-8 text file; a line that is not UTF-8
    is a ``DataError`` naming it (decoded line by line to know which)."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{path}, line {lineno}: not UTF-8 text (is this a binary file?)") from None


def _display_name(path: Path) -> str:
    # "citeulike-a/users.dat" says more than "users.dat".
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def _parse_ids(tokens: list[str], path: Path, lineno: int, what: str) -> list[int]:
    """Non-negative integers, with an error naming the first bad token."""
    for token in tokens:
        if not _INT_TOKEN.fullmatch(token):
            raise DataError(f"{path}, line {lineno}: {what} {token!r} is not an integer")
        if token.startswith("-"):
            raise DataError(f"{path}, line {lineno}: {what} {token} is negative")
    return [int(t) for t in tokens]


def load_users_dat(path: str | os.PathLike) -> Interactions:
    """Read the ``users.dat`` format: line u (0-based) is user u, ``COUNT item
    item ...`` with 0-based item ids; an empty or ``0`` line is a user with no
    interactions (dropped by the dense re-indexing, its line number stays in
    ``user_ids``)."""
    path = _check_file(path)
    users: list[int] = []
    items: list[int] = []
    n_lines = 0
    for lineno, line in _lines(path):
        n_lines = lineno
        tokens = line.split()
        if not tokens:
            continue
        (count,) = _parse_ids(tokens[:1], path, lineno, "COUNT")
        line_items = _parse_ids(tokens[1:], path, lineno, "item id")
        if count != len(line_items):
            raise DataError(f"{path}, line {lineno}: COUNT is {count} but the line lists {len(line_items)} items")
        users.extend([lineno - 1] * count)
        items.extend(line_items)
    if not items:
        raise DataError(f"{path}: no interactions ({n_lines} lines, all empty)")
    u, i, _ = _unique_pairs(np.array(users, dtype=np.int64), np.array(items, dtype=np.int64), None)
    return Interactions(n_lines, int(i.max()) + 1, u, i, name=_display_name(path)).reindexed()


_SEPARATORS = ("\t", "::", ",", ";", "|")


def _guess_separator(line: str) -> str | None:
    for sep in _SEPARATORS:
        if sep in line:
            return sep
    return None  # whitespace


def load_delimited(
    path: str | os.PathLike,
    *,
    sep: str | None = None,
    header: bool = False,
    rating_threshold: float | None = None,
) -> Interactions:
    """Read delimited text, one interaction per line: ``user, item [, rating
    [, timestamp]]``.

    ``sep=None`` guesses the separator from the first data line (tab, ``::``,
    comma, semicolon, ``|``, else whitespace). ``header=True`` skips the first
    line. With ``rating_threshold`` only rows with ``rating >= threshold`` are
    interactions. User and item ids are opaque strings (kept as int64 when all
    are integers). Empty lines and lines starting with ``#`` are skipped.
    """
    path = _check_file(path)
    raw_users: list[str] = []
    raw_items: list[str] = []
    ratings: list[float] = []
    times: list[float] = []
    n_columns = None
    for lineno, line in _lines(path):
        if header and lineno == 1:
            continue
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if n_columns is None and sep is None:
            sep = _guess_separator(stripped)
        fields = [x.strip() for x in stripped.split(sep)]
        if n_columns is None:
            n_columns = len(fields)
            if not 2 <= n_columns <= 4:
                raise DataError(
                    f"{path}, line {lineno}: expected 2 to 4 columns (user, item [, rating "
                    f"[, timestamp]]), found {n_columns}"
                )
            if rating_threshold is not None and n_columns < 3:
                raise ConfigError(f"{path}: a rating threshold needs a rating column (found {n_columns} columns)")
        elif len(fields) != n_columns:
            raise DataError(f"{path}, line {lineno}: expected {n_columns} columns, found {len(fields)}")
        if not fields[0] or not fields[1]:
            raise DataError(f"{path}, line {lineno}: empty user or item id")
        raw_users.append(fields[0])
        raw_items.append(fields[1])
        for label, column, values in (("rating", 2, ratings), ("timestamp", 3, times)):
            if n_columns > column:
                try:
                    values.append(float(fields[column]))
                except ValueError:
                    raise DataError(
                        f"{path}, line {lineno}: {label} {fields[column]!r} is not a number"
                    ) from None
    if not raw_users:
        raise DataError(f"{path}: no interactions (the file has no data lines)")
    keep = np.ones(len(raw_users), dtype=bool)
    if rating_threshold is not None:
        keep = np.array(ratings) >= rating_threshold
        if not keep.any():
            raise DataError(f"{path}: no interaction has a rating >= {rating_threshold}")
    user_ids, users = _encode_ids(np.array(raw_users, dtype=object)[keep])
    item_ids, items = _encode_ids(np.array(raw_items, dtype=object)[keep])
    timestamps = np.array(times, dtype=np.float64)[keep] if times else None
    users, items, timestamps = _unique_pairs(users, items, timestamps)
    return Interactions(
        len(user_ids), len(item_ids), users, items, timestamps, user_ids, item_ids, _display_name(path)
    )


def _encode_ids(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense codes of the raw ids (sorted numerically when all are integers)."""
    if all(_INT_TOKEN.fullmatch(x) for x in raw):
        raw = raw.astype(np.int64)
    else:
        raw = raw.astype(str)
    uniques, codes = np.unique(raw, return_inverse=True)
    return uniques, codes.astype(np.int64)


FORMATS = ("auto", "users.dat", "delimited")


def detect_format(path: str | os.PathLike, n_lines: int = 50) -> str:
    """Guess the format from the first non-empty lines: ``"users.dat"`` when
    they are all non-negative integers, the first line's COUNT matches its
    items, and either every COUNT matches or the lines vary in length (a
    delimited file has a fixed number of columns); else ``"delimited"``.
    Ambiguous files (e.g. ``1 5`` on every line) read as users.dat: pass the
    format explicitly for those."""
    path = _check_file(path)
    lines: list[list[str]] = []
    for _, line in _lines(path):
        tokens = line.split()
        if tokens:
            lines.append(tokens)
        if len(lines) >= n_lines:
            break
    if not lines or not all(_INT_TOKEN.fullmatch(t) and not t.startswith("-") for tokens in lines for t in tokens):
        return "delimited"
    counts_match = [int(tokens[0]) == len(tokens) - 1 for tokens in lines]
    varying_length = len({len(tokens) for tokens in lines}) > 1
    return "users.dat" if counts_match[0] and (all(counts_match) or varying_length) else "delimited"


def load(
    path: str | os.PathLike,
    *,
    format: str = "auto",
    sep: str | None = None,
    header: bool = False,
    rating_threshold: float | None = None,
) -> Interactions:
    """Load a data file in either format (``format="auto"`` detects it)."""
    if format not in FORMATS:
        raise ConfigError(f"unknown data format {format!r}; choose one of {', '.join(FORMATS)}")
    if format == "auto":
        format = detect_format(path)
    if format == "users.dat":
        if header or sep is not None or rating_threshold is not None:
            raise ConfigError("--sep, --header and --rating-threshold apply to delimited text, not users.dat")
        return load_users_dat(path)
    return load_delimited(path, sep=sep, header=header, rating_threshold=rating_threshold)


def kcore(data: Interactions, min_user: int = 1, min_item: int = 1) -> Interactions:
    """Repeatedly drop users with fewer than ``min_user`` and items with fewer
    than ``min_item`` interactions until none is left to drop; re-index densely."""
    if min_user < 1 or min_item < 1:
        raise ConfigError(f"k-core thresholds must be >= 1, got users {min_user}, items {min_item}")
    keep = np.ones(len(data), dtype=bool)
    while True:
        user_counts = np.bincount(data.users[keep], minlength=data.n_users)
        item_counts = np.bincount(data.items[keep], minlength=data.n_items)
        still = keep & (user_counts[data.users] >= min_user) & (item_counts[data.items] >= min_item)
        if still.sum() == keep.sum():
            break
        keep = still
    if not keep.any():
        raise DataError(
            f"{data.name}: no interactions survive the {min_user}-user / {min_item}-item core filter"
        )
    return data.select(keep).reindexed()


def synthetic(
    n_users: int = 2000,
    n_items: int = 1500,
    *,
    n_factors: int = 32,
    mean_interactions: int = 40,
    min_interactions: int = 10,
    signal: float = 3.0,
    popularity: float = 1.0,
    seed: int = 0,
) -> Interactions:
    """An implicit-feedback data set drawn from a planted model (seeded).

    User and item factors are Gaussian in ``n_factors`` dimensions; user u picks
    ``n_u`` distinct items (``min_interactions`` plus a geometric excess, mean
    ``mean_interactions``) without replacement, with probability proportional
    to ``exp(signal * <p_u, q_i> + popularity * b_i)``, ``b_i ~ N(0, 1)`` (a
    log-normal popularity skew). Many planted factors make a small model fall
    clearly short of a large one, which is what the demo shows.
    """
    if min(n_users, n_items, n_factors, min_interactions) < 1 or mean_interactions < min_interactions:
        raise ConfigError("synthetic data needs positive sizes and mean_interactions >= min_interactions")
    if mean_interactions > n_items:
        raise ConfigError(f"mean_interactions ({mean_interactions}) exceeds n_items ({n_items})")
    rng = np.random.default_rng(seed)
    user_factors = rng.standard_normal((n_users, n_factors)) / np.sqrt(n_factors)
    item_factors = rng.standard_normal((n_items, n_factors))
    logits = signal * user_factors @ item_factors.T + popularity * rng.standard_normal(n_items)
    excess = mean_interactions - min_interactions
    counts = min_interactions + (rng.geometric(1.0 / (excess + 1), n_users) - 1 if excess else 0)
    counts = np.minimum(counts, n_items)
    # Gumbel top-k: the k largest of logits + Gumbel noise are a draw of k
    # distinct items without replacement with the softmax probabilities.
    keys = logits + rng.gumbel(size=logits.shape)
    ranked = np.argsort(-keys, axis=1)
    take = np.arange(n_items)[None, :] < counts[:, None]
    users = np.broadcast_to(np.arange(n_users)[:, None], ranked.shape)[take]
    items = ranked[take]
    return Interactions(n_users, n_items, users, items, name="synthetic").reindexed()
