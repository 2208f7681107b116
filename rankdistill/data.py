"""Implicit-feedback data: the container, the loaders, k-core filtering and the
embedded synthetic data set.

The loaders read text (users.dat or delimited), gunzipped when the file is
gzip-compressed; a known binary format (Parquet, zip, Excel, ...) is refused
by name. A delimited file's columns are named by ``columns=``, else by its
header (``COLUMN_NAMES``), else by position.

Every loader returns *dense* ids (users ``0..n_users-1``, items
``0..n_items-1``, only those with at least one interaction) and keeps the ids of
the file in ``user_ids`` / ``item_ids``. Interactions are a set: a repeated
(user, item) pair is kept once (with its latest timestamp).
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import math
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence

import numpy as np

from .errors import ConfigError, DataError

__all__ = [
    "COLUMN_NAMES",
    "FORMATS",
    "DataError",
    "Interactions",
    "detect_format",
    "kcore",
    "load",
    "load_delimited",
    "load_users_dat",
    "parse_columns",
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
            if not np.isfinite(self.timestamps).all():  # they order the split: NaN would sort as the latest
                raise DataError(f"{self.name}: timestamps must be finite numbers (found NaN or inf)")
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


# How much of a file is looked at to recognise a binary format.
_SNIFF_BYTES = 1024
_GZIP_MAGIC = b"\x1f\x8b"


def _binary_format(head: bytes, tail: bytes | None) -> tuple[str, str] | None:
    """``(what the file is, what to do)`` when the first bytes of a file (and,
    for a plain file, its last ones) are those of a known binary format."""
    if head.startswith(b"PAR1") and (tail == b"PAR1" or b"\0" in head):
        return "a Parquet file", ("convert it to CSV/TSV, e.g. with pandas: "
                                  "pandas.read_parquet('FILE').to_csv('ratings.csv', index=False)")
    if head.startswith(b"ARROW1"):
        return "an Arrow/Feather file", ("convert it to CSV/TSV, e.g. with pandas: "
                                         "pandas.read_feather('FILE').to_csv('ratings.csv', index=False)")
    if head.startswith(b"PK\x03\x04"):
        # a zip archive: its first member's name (local file header: name length at 26, name at 30)
        size = int.from_bytes(head[26:28], "little")
        first = head[30:30 + size].decode("utf-8", "replace")
        if first == "[Content_Types].xml" or b"xl/" in head:
            return "an Excel workbook (.xlsx)", "save the sheet as CSV (File > Save As) or with pandas.read_excel"
        if first.endswith(".npy"):
            return "a NumPy .npz archive", "write the interactions as text (user, item per line)"
        named = f" (its first member: {first})" if first else ""
        return f"a zip archive{named}", "unzip it and pass the text file inside"
    if head.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):
        return "a Microsoft Office file (e.g. an .xls workbook)", "save the sheet as CSV"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "an HDF5 file", ("convert it to CSV/TSV, e.g. with pandas: "
                                "pandas.read_hdf('FILE').to_csv('ratings.csv', index=False)")
    if head.startswith(b"\x93NUMPY"):
        return "a NumPy .npy array", "write the interactions as text (user, item per line)"
    if head.startswith(b"SQLite format 3\0"):
        return "an SQLite database", "export the table as CSV (sqlite3 -csv -header FILE 'select ...')"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle", "write the interactions as text (e.g. DataFrame.to_csv)"
    if head.startswith(_GZIP_MAGIC):
        return "compressed twice with gzip", "gunzip it once"
    if re.match(rb"BZh[1-9](1AY&SY|\x17rE8P\x90)", head):
        return "compressed with bzip2", "decompress it (bunzip2), or compress it with gzip instead"
    if head.startswith(b"\xfd7zXZ\0"):
        return "compressed with xz", "decompress it (unxz), or compress it with gzip instead"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "compressed with zstd", "decompress it (unzstd), or compress it with gzip instead"
    if head.startswith(b"7z\xbc\xaf\x27\x1c"):
        return "a 7-Zip archive", "extract it and pass the text file inside"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "UTF-16 text", "save it as UTF-8 (e.g. iconv -f UTF-16 -t UTF-8)"
    if len(head) > 257 + 5 and head[257:262] == b"ustar":
        return "a tar archive", "extract it (tar -xf) and pass the text file inside"
    return None


@contextlib.contextmanager
def _open_data(path: Path) -> Iterator[BinaryIO]:
    """The bytes of a data file, gunzipped when it is gzip-compressed (by its
    content, whatever its name); a ``DataError`` naming the format of a known
    binary file (Parquet, zip, Excel, ...) and for a file that holds a NUL
    byte early on (a binary file: the line is named, as when one comes later)."""
    with open(path, "rb") as raw:
        head = raw.read(_SNIFF_BYTES)
        compressed = head.startswith(_GZIP_MAGIC)
        if compressed:
            raw.seek(0)
            stream: BinaryIO = gzip.GzipFile(fileobj=raw, mode="rb")
            try:
                head = stream.read(_SNIFF_BYTES)
                stream.seek(0)
            except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
                raise DataError(f"{path}: not a readable gzip file ({exc})") from None
            if not head:
                raise DataError(f"{path}: the file is empty (once gunzipped)")
            tail = None
        else:
            stream = raw
            raw.seek(max(raw.seek(0, os.SEEK_END) - 4, 0))
            tail = raw.read(4)
            raw.seek(0)
        known = _binary_format(head, tail)
        if known is not None:
            what, todo = known
            inside = " (inside gzip)" if compressed and what != "compressed twice with gzip" else ""
            text = "UTF-8 text" if what == "UTF-16 text" else "text"
            raise DataError(f"{path} is {what}{inside}, not {text}; {todo.replace('FILE', str(path))}")
        if b"\0" in head:
            lineno = head.count(b"\n", 0, head.index(b"\0")) + 1
            raise DataError(f"{path}, line {lineno}: holds a NUL byte (is this a binary file?)")
        yield stream


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of a UTF-8 text file (gunzipped if it is
    gzip-compressed), without a leading byte order mark; a known binary format
    is refused by name (``_open_data``), and a line that is not UTF-8 or holds
    a NUL byte is a ``DataError`` naming it (decoded line by line to know which)."""
    with _open_data(path) as f:
        lineno = 0
        try:  # (only reading the file raises these: the caller's exceptions do not reach this frame)
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
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise DataError(f"{path}, after line {lineno}: the gzip data is damaged or truncated ({exc})") from None


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
    """Read the ``users.dat`` format (gunzipped if it is gzip-compressed):
    line u (0-based) is user u, ``COUNT item item ...`` with item ids in
    ``[0, 2^63-1]``; an empty or ``0`` line is a
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


# The columns a delimited file may have, and the names a header (or
# ``columns=``) may give each: compared case-insensitively, without a RecBole
# type suffix (``user_id:token``), surrounding quotes, and with ``-`` and
# spaces read as ``_`` (``User-ID`` is ``user_id``).
COLUMN_NAMES: dict[str, tuple[str, ...]] = {
    "user": ("user", "user_id", "userid", "uid", "reviewer_id", "reviewerid", "customer_id"),
    "item": ("item", "item_id", "itemid", "iid", "movie", "movie_id", "movieid", "product_id", "asin",
             "business_id", "venue_id", "book_id", "isbn", "track_id"),
    "rating": ("rating", "score", "stars", "book_rating"),
    "timestamp": ("timestamp", "time", "ts", "unix_timestamp", "unixreviewtime"),
}
_ALIASES = {alias: column for column, aliases in COLUMN_NAMES.items() for alias in aliases}
_IGNORED = ("-", "_")  # a column named so in columns= is skipped
# Without a header or columns=: the columns by position.
_POSITIONAL = ("user", "item", "rating", "timestamp")


def _column_key(name: str) -> str:
    name = name.strip().strip("\"'").strip().split(":", 1)[0]  # RecBole: "user_id:token"
    return re.sub(r"[\s\-]+", "_", name.lower())


def _known_names() -> str:
    return "; ".join(f"{column}: {', '.join(aliases)}" for column, aliases in COLUMN_NAMES.items())


def _role_problem(roles: Sequence[str | None], names: Sequence[str]) -> str | None:
    """What is wrong with the roles of a file's columns (None: nothing)."""
    for column in COLUMN_NAMES:
        named = [repr(name.strip()) for name, role in zip(names, roles) if role == column]
        if len(named) > 1:
            return f"{' and '.join(named)} both name the {column} column"
    missing = [column for column in ("user", "item") if column not in roles]
    if missing:
        return f"no {' and no '.join(missing)} column"
    return None


def parse_columns(columns: str | Sequence[str]) -> tuple[str | None, ...]:
    """The role of each column of a delimited file, in the file's order, from
    names such as ``"item,user,rating"`` or ``["user", "item", "-",
    "timestamp"]``: ``user``, ``item``, ``rating``, ``timestamp`` or one of
    their aliases (``COLUMN_NAMES``), ``-`` or ``_`` (None) for a column to
    ignore. User and item are required, no column may be named twice; a
    mistake is a ``ConfigError``."""
    if isinstance(columns, str):
        names = columns.split(",")
    elif isinstance(columns, Sequence) and all(isinstance(name, str) for name in columns):
        names = list(columns)
    else:
        raise ConfigError(f"columns: expected names such as 'user,item,rating' or a list of them, got {columns!r}")
    roles: list[str | None] = []
    for name in names:
        if name.strip() in _IGNORED:
            roles.append(None)
            continue
        role = _ALIASES.get(_column_key(name))
        if role is None:
            what = f"unknown column name {name.strip()!r}" if name.strip() else "an empty column name"
            raise ConfigError(f"columns {','.join(n.strip() for n in names)!r}: {what}; name each column user, "
                              "item, rating or timestamp (or an alias, e.g. user_id, movieId), or - to ignore it")
        roles.append(role)
    problem = _role_problem(roles, names)
    if problem:
        raise ConfigError(f"columns {','.join(n.strip() for n in names)!r}: {problem}")
    return tuple(roles)


def _header_roles(fields: list[str]) -> tuple[str, ...] | None:
    """The roles a header line gives its columns when every name is known,
    user and item among them, none twice; else None."""
    roles = [_ALIASES.get(_column_key(field)) for field in fields]
    if None in roles or _role_problem(roles, fields):
        return None
    return tuple(roles)


def _suggested_columns(fields: list[str]) -> str | None:
    """``--columns`` for a header: its known names, ``-`` for the others; None
    when that would not be valid (no user or item, a column named twice)."""
    roles = [_ALIASES.get(_column_key(field)) for field in fields]
    if _role_problem(roles, fields):
        return None
    return ",".join(role or "-" for role in roles)


def _unrecognised_header(path: Path, lineno: int, fields: list[str]) -> str:
    unknown = [field for field in fields if _ALIASES.get(_column_key(field)) is None]
    verb = "is not a known column name" if len(unknown) == 1 else "are not known column names"
    problem = (f"{', '.join(map(repr, unknown))} {verb}"
               if unknown else _role_problem([_ALIASES[_column_key(f)] for f in fields], fields))
    suggestion = _suggested_columns(fields)
    example = f", e.g. --columns {suggestion}" if suggestion else ""
    return (f"{path}, line {lineno}: the header {', '.join(map(repr, fields))} cannot be read: {problem}; name the "
            f"file's columns with --columns (columns= in Python){example} (- ignores a column); known names, in "
            f"any case: {_known_names()}")


def _header_hint(fields: list[str], columns_given: bool) -> str:
    """What to do when a first line that was read as data looks like a header."""
    if columns_given:
        return "pass --header (header=True) to skip it"
    suggestion = _suggested_columns(fields) or "user,item,..."
    return (f"its names are not known column names, so name the columns: --header --columns {suggestion} "
            "(- ignores a column)")


def load_delimited(
    path: str | os.PathLike,
    *,
    sep: str | None = None,
    header: bool | None = None,
    columns: str | Sequence[str] | None = None,
    rating_threshold: float | None = None,
) -> Interactions:
    """Read delimited text, one interaction per line (a ``.gz`` file is
    gunzipped): a user, an item and optionally a rating and a timestamp.

    Which column is which: ``columns`` if given (see ``parse_columns``: e.g.
    ``["item", "user", "-", "timestamp"]``, every column of the file named,
    ``-`` to ignore one), else the header's names, else the position (``user,
    item [, rating [, timestamp]]``). The header is the first line that is
    neither empty nor a ``#`` comment: with ``header=None`` (the default) it is
    a header when each of its names is a known column name (``COLUMN_NAMES``:
    ``userId``, ``item_id:token``, ``rating``, ``timestamp``, ... in any case),
    user and item among them; ``header=True``: it is a header (its names must
    be known unless ``columns`` is given), ``header=False``: it is data. A
    recognised header that disagrees with ``columns`` is an error (pass
    ``header=True`` to skip it and keep ``columns``).

    ``sep=None`` guesses the separator from that first line (tab, ``::``,
    comma, semicolon, ``|``, else whitespace). With ``rating_threshold`` only
    rows with ``rating >= threshold`` are interactions. User and item ids are
    opaque strings, kept as int64 when all of a column's ids are integers that
    fit int64 (one that does not keeps the column as strings). Empty lines and
    lines starting with ``#`` are skipped. With ``header=None``, a first line
    read as data whose ids are not integers while the other lines' are, or
    whose rating or timestamp is not a number, is an error that says how to
    name the columns.
    """
    path = _check_file(path)
    if header not in (None, True, False):
        raise ConfigError(f"header must be True, False or None (detect), got {header!r}")
    roles = None if columns is None else parse_columns(columns)
    raw_users: list[str] = []
    raw_items: list[str] = []
    ratings: list[float] = []
    times: list[float] = []
    n_columns = None
    # positions of the user, item, rating and timestamp columns (None: absent), once known
    at_user = at_item = 0
    at_rating: int | None = None
    at_time: int | None = None
    header_lineno = None
    first: tuple[int, str, list[str]] | None = None  # the first data line: the header hints
    started = False
    for lineno, line in _lines(path):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if sep is None and not started:
            sep = _guess_separator(stripped)
        fields = [x.strip() for x in stripped.split(sep)]
        if not started:
            started = True
            named = _header_roles(fields)
            if header or (header is None and named is not None):
                header_lineno = lineno
                if roles is None:
                    if named is None:
                        raise DataError(_unrecognised_header(path, lineno, fields))
                    roles = named
                elif header is None and named != roles:
                    raise DataError(
                        f"{path}, line {lineno}: the header names the columns {','.join(named)} but --columns "
                        f"(columns=) names them {','.join(r or '-' for r in roles)}; drop --columns to use the "
                        "header, or pass --header (header=True) to skip the header and use --columns")
                if len(roles) != len(fields):
                    raise DataError(f"{path}, line {lineno}: the header has {len(fields)} columns but --columns "
                                    f"(columns=) names {len(roles)}")
                n_columns = len(fields)
                continue
        if first is None:
            first = (lineno, stripped, fields)
            if roles is None:
                if not 2 <= len(fields) <= 4:
                    raise DataError(
                        f"{path}, line {lineno}: expected 2 to 4 columns (user, item [, rating [, timestamp]]), "
                        f"found {len(fields)}; name the file's columns with --columns (columns=), e.g. "
                        f"--columns user,item,rating,timestamp{',-' * max(len(fields) - 4, 0)} (- ignores a column)")
                roles = _POSITIONAL[:len(fields)]
            elif n_columns is None and len(fields) != len(roles):
                raise DataError(f"{path}, line {lineno}: --columns (columns=) names {len(roles)} columns, the "
                                f"line has {len(fields)}")
            n_columns = len(roles)
            at_user, at_item = roles.index("user"), roles.index("item")
            at_rating = roles.index("rating") if "rating" in roles else None
            at_time = roles.index("timestamp") if "timestamp" in roles else None
            if rating_threshold is not None and at_rating is None:
                raise ConfigError(f"{path}: a rating threshold needs a rating column (the file's columns: "
                                  f"{', '.join(r or '-' for r in roles)})")
        if len(fields) != n_columns:
            raise DataError(f"{path}, line {lineno}: expected {n_columns} columns, found {len(fields)}")
        user, item = fields[at_user], fields[at_item]
        if not user or not item:
            raise DataError(f"{path}, line {lineno}: empty user or item id")
        raw_users.append(user)
        raw_items.append(item)
        try:
            if at_rating is not None:
                ratings.append(float(fields[at_rating]))
            if at_time is not None:
                times.append(float(fields[at_time]))
        except ValueError:
            bad_rating = at_rating is not None and len(ratings) < len(raw_users)
            label, token = ("rating", fields[at_rating]) if bad_rating else ("timestamp", fields[at_time])
            hint = ""
            if lineno == first[0] and header is None and header_lineno is None:
                hint = f"; if line {lineno} is a header, {_header_hint(fields, columns is not None)}"
            raise DataError(f"{path}, line {lineno}: {label} {_shown(token)!r} is not a number{hint}") from None
        # float() takes nan and inf: a NaN time would sort last and be held out as the latest
        for label, at, values in (("rating", at_rating, ratings), ("timestamp", at_time, times)):
            if at is not None and not math.isfinite(values[-1]):
                raise DataError(f"{path}, line {lineno}: {label} {_shown(fields[at])!r} is not a finite number")
    if not raw_users:
        raise DataError(f"{path}: no interactions (the file has no data lines)")
    raw_users = np.array(raw_users, dtype=object)
    raw_items = np.array(raw_items, dtype=object)
    user_is_int = np.array([_INT_TOKEN.fullmatch(x) is not None for x in raw_users], dtype=bool)
    item_is_int = np.array([_INT_TOKEN.fullmatch(x) is not None for x in raw_items], dtype=bool)
    # "user,item" above integer ids would otherwise become an interaction.
    if (
        header is None
        and header_lineno is None
        and len(raw_users) > 1
        and not (user_is_int[0] or item_is_int[0])
        and (user_is_int[1:].all() or item_is_int[1:].all())
    ):
        raise DataError(
            f"{path}, line {first[0]}: {_shown(first[1])!r} looks like a header (the other lines "
            f"have integer ids); {_header_hint(first[2], columns is not None)}"
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
    format explicitly for those. A first line of known column names (a header,
    see ``load_delimited``) means delimited text."""
    path = _check_file(path)
    lines: list[list[str]] = []
    delimited_line = False
    header_checked = False
    for _, line in _lines(path):
        tokens = line.split()
        if tokens:
            if not header_checked and not tokens[0].startswith("#"):
                header_checked = True
                stripped = line.strip()
                if _header_roles([x.strip() for x in stripped.split(_guess_separator(stripped))]) is not None:
                    return "delimited"
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
    header: bool | None = None,
    columns: str | Sequence[str] | None = None,
    rating_threshold: float | None = None,
) -> Interactions:
    """Load a data file in either format (``format="auto"`` detects it); a
    gzip-compressed file is read as its content. ``sep``, ``header``,
    ``columns`` and ``rating_threshold`` are those of ``load_delimited``."""
    if format not in FORMATS:
        raise ConfigError(f"unknown data format {format!r}; choose one of {', '.join(FORMATS)}")
    detected = format == "auto"
    if columns is not None:
        parse_columns(columns)  # a mistake in the names is said before the file is read
    if detected:
        format = detect_format(path)
    if format == "users.dat" and (header or sep is not None or columns is not None or rating_threshold is not None):
        hint = (" (the file was detected as users.dat; pass --format delimited, format='delimited', if it is not)"
                if detected else "")
        raise ConfigError(f"--sep, --header, --columns and --rating-threshold apply to delimited text, not "
                          f"users.dat{hint}")
    try:
        if format == "users.dat":
            return load_users_dat(path)
        return load_delimited(path, sep=sep, header=header, columns=columns, rating_threshold=rating_threshold)
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
