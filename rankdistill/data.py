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
_UINT_TOKEN = re.compile(r"[0-9]+")
_INT64_MAX = np.iinfo(np.int64).max


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
    """Keep one row per (user, item); with timestamps, the latest one. The ids
    must be dense: the keys span ``n_users * n_items``."""
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
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    return path


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of a UTF-8 text file, without a leading byte
    order mark; a line that is not UTF-8 or holds a NUL byte is a ``DataError``
    naming it (decoded line by line to know which)."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                # utf-8-sig drops the BOM some editors write at the start of the file
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{path}, line {lineno}: not UTF-8 text (is this a binary file?)") from None
            # NUL is valid UTF-8 but never in a text file: a binary file of zeros would
            # otherwise fail as a confusing "not an integer" or "1 column".
            if "\0" in line:
                raise DataError(f"{path}, line {lineno}: holds a NUL byte (is this a binary file?)")
            yield lineno, line


def _display_name(path: Path) -> str:
    # "citeulike-a/users.dat" says more than "users.dat".
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def _shown(token: str) -> str:
    # a token of 100,000 digits would drown the message
    return token if len(token) <= 40 else f"{token[:20]}... ({len(token)} characters)"


def _parse_ids(tokens: list[str], path: Path, lineno: int, what: str) -> list[int]:
    """Integers in ``[0, 2^63-1]``, with an error naming the first bad token."""
    for token in tokens:
        if not _INT_TOKEN.fullmatch(token):
            raise DataError(f"{path}, line {lineno}: {what} {_shown(token)!r} is not an integer")
        if token.startswith("-"):
            raise DataError(f"{path}, line {lineno}: {what} {_shown(token)} is negative")
        # the length test first: int() refuses strings of more than 4,300 digits
        if len(token) > 18 and (len(token.lstrip("0")) > 19 or int(token) > _INT64_MAX):
            raise DataError(f"{path}, line {lineno}: {what} {_shown(token)} is larger than 2^63-1")
    return [int(t) for t in tokens]


def load_users_dat(path: str | os.PathLike) -> Interactions:
    """Read the ``users.dat`` format: line u (0-based) is user u, ``COUNT item
    item ...`` with item ids in ``[0, 2^63-1]``; an empty or ``0`` line is a
    user with no interactions (dropped by the dense re-indexing; the kept
    users' line numbers are ``user_ids``, their items' ids ``item_ids``).
    Memory grows with the number of interactions, not with the largest id."""
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
    # Dense ids before anything else: an array indexed by the file's ids would be
    # as large as the largest id. np.unique sorts, so dense ids keep the ids' order.
    user_ids, u = np.unique(np.array(users, dtype=np.int64), return_inverse=True)
    item_ids, i = np.unique(np.array(items, dtype=np.int64), return_inverse=True)
    u, i, _ = _unique_pairs(u, i, None)
    return Interactions(len(user_ids), len(item_ids), u, i, None, user_ids, item_ids, _display_name(path))


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
    interactions. User and item ids are opaque strings, kept as int64 when all
    of a column's ids are integers that fit int64 (one that does not keeps the
    column as strings). Empty lines and lines starting with ``#`` are skipped.
    Without ``header``, a first line whose ids are not integers while the other
    lines' are, or whose rating or timestamp is not a number, is an error that
    suggests ``header=True``.
    """
    path = _check_file(path)
    raw_users: list[str] = []
    raw_items: list[str] = []
    ratings: list[float] = []
    times: list[float] = []
    n_columns = None
    first: tuple[int, str] | None = None  # (line number, text) of the first data line: the header hints
    for lineno, line in _lines(path):
        if header and lineno == 1:
            continue
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if first is None:
            first = (lineno, stripped)
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
                    hint = f"; if line {lineno} is a header, {_header_hint(lineno)}" if lineno == first[0] else ""
                    raise DataError(
                        f"{path}, line {lineno}: {label} {_shown(fields[column])!r} is not a number{hint}"
                    ) from None
    if not raw_users:
        raise DataError(f"{path}: no interactions (the file has no data lines)")
    raw_users = np.array(raw_users, dtype=object)
    raw_items = np.array(raw_items, dtype=object)
    user_is_int = np.array([_INT_TOKEN.fullmatch(x) is not None for x in raw_users], dtype=bool)
    item_is_int = np.array([_INT_TOKEN.fullmatch(x) is not None for x in raw_items], dtype=bool)
    # "user,item" above integer ids would otherwise become an interaction.
    if (
        not header
        and len(raw_users) > 1
        and not (user_is_int[0] or item_is_int[0])
        and (user_is_int[1:].all() or item_is_int[1:].all())
    ):
        raise DataError(
            f"{path}, line {first[0]}: {_shown(first[1])!r} looks like a header (the other lines "
            f"have integer ids); {_header_hint(first[0])}"
        )
    keep = np.ones(len(raw_users), dtype=bool)
    if rating_threshold is not None:
        keep = np.array(ratings) >= rating_threshold
        if not keep.any():
            raise DataError(f"{path}: no interaction has a rating >= {rating_threshold}")
    user_ids, users = _encode_ids(raw_users[keep], user_is_int[keep].all())
    item_ids, items = _encode_ids(raw_items[keep], item_is_int[keep].all())
    timestamps = np.array(times, dtype=np.float64)[keep] if times else None
    users, items, timestamps = _unique_pairs(users, items, timestamps)
    return Interactions(
        len(user_ids), len(item_ids), users, items, timestamps, user_ids, item_ids, _display_name(path)
    )


def _header_hint(lineno: int) -> str:
    # --header skips line 1, not the first data line: a data line after comments is kept
    return "pass --header (header=True) to skip it" if lineno == 1 else "start it with # (--header skips line 1 only)"


def _encode_ids(raw: np.ndarray, all_int: bool) -> tuple[np.ndarray, np.ndarray]:
    """Dense codes of the raw ids: sorted numerically when all are integers
    that fit int64, else all are strings, sorted as text."""
    try:
        ids = raw.astype(np.int64) if all_int else raw.astype(str)
    except (OverflowError, ValueError):  # beyond int64 (ValueError: over 4,300 digits)
        ids = raw.astype(str)
    uniques, codes = np.unique(ids, return_inverse=True)
    return uniques, codes.astype(np.int64)


FORMATS = ("auto", "users.dat", "delimited")


def detect_format(path: str | os.PathLike, n_lines: int = 50) -> str:
    """Guess the format from the first non-empty lines, split at whitespace.
    A line *counts* when its first token is a COUNT equal to the number of
    tokens after it. ``"users.dat"`` when every line counts, or when the lines
    vary in length (a delimited file has a fixed number of columns) and the
    first line or most lines count; else ``"delimited"``. The ids are not
    checked here, so that a users.dat with a bad id is read as one and fails
    naming its line; only a line with a delimiter (tab, ``::``, comma, ``;``,
    ``|``) and a token other than a non-negative integer means delimited text.
    Ambiguous files (e.g. ``1 5`` on every line) read as users.dat: pass the
    format explicitly for those."""
    path = _check_file(path)
    lines: list[list[str]] = []
    delimited_line = False
    for _, line in _lines(path):
        tokens = line.split()
        if tokens:
            lines.append(tokens)
            delimited_line |= _guess_separator(line.strip()) is not None and not all(
                _UINT_TOKEN.fullmatch(t) for t in tokens
            )
        if len(lines) >= n_lines:
            break
    if not lines or delimited_line:
        return "delimited"
    # (a COUNT over 18 digits cannot match: no line is that long, and int() needs no limit)
    counts = [_UINT_TOKEN.fullmatch(t[0]) is not None and len(t[0]) <= 18 and int(t[0]) == len(t) - 1 for t in lines]
    varying_length = len({len(tokens) for tokens in lines}) > 1
    if all(counts) or (varying_length and (counts[0] or 2 * sum(counts) > len(counts))):
        return "users.dat"
    return "delimited"


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
    detected = format == "auto"
    if detected:
        format = detect_format(path)
    if format == "users.dat" and (header or sep is not None or rating_threshold is not None):
        raise ConfigError("--sep, --header and --rating-threshold apply to delimited text, not users.dat")
    try:
        if format == "users.dat":
            return load_users_dat(path)
        return load_delimited(path, sep=sep, header=header, rating_threshold=rating_threshold)
    except DataError as exc:
        if not detected:
            raise
        # a guessed format may be the problem: say which one was assumed
        kind = "delimited text" if format == "delimited" else format
        raise DataError(f"{exc}; the file looks like {kind} (--format sets the format)") from None


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
