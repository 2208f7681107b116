"""Delimited files by their columns' names (a header, or ``columns=`` /
``--columns``), gzip-compressed files, and binary files refused by name."""

import gzip
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rankdistill import cli
from rankdistill.data import (
    COLUMN_NAMES,
    DataError,
    Interactions,
    detect_format,
    load,
    load_delimited,
    load_users_dat,
    parse_columns,
)
from rankdistill.errors import ConfigError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# One table, four interactions; with --rating-threshold 4 only (1, 10) and
# (2, 10) stay. Every timestamp is >= 4: a loader that took the timestamp
# for the rating would keep all four.
ROWS = [  # user, item, rating, timestamp
    ("1", "10", "5", "100"),
    ("1", "11", "2", "200"),
    ("2", "10", "4", "300"),
    ("2", "12", "3", "50"),
]
KEPT_AT_4 = {(1, 10): 100.0, (2, 10): 300.0}
ALL = {(1, 10): 100.0, (1, 11): 200.0, (2, 10): 300.0, (2, 12): 50.0}


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def table(sep: str, header: list[str] | None, order=(0, 1, 2, 3), rows=ROWS) -> str:
    lines = [] if header is None else [sep.join(header)]
    lines += [sep.join(row[k] for k in order) for row in rows]
    return "\n".join(lines) + "\n"


def timed_pairs(data: Interactions) -> dict[tuple, float]:
    """(user, item) in the file's ids -> timestamp (None without timestamps)."""
    times = data.timestamps if data.timestamps is not None else [None] * len(data)
    return {(data.user_ids[u].item(), data.item_ids[i].item()): t for u, i, t in zip(data.users, data.items, times)}


def same(a: Interactions, b: Interactions) -> bool:
    return timed_pairs(a) == timed_pairs(b) and a.fingerprint() == b.fingerprint()


# ---------------------------------------------------------------- headers

RECBOLE = ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
MOVIELENS = ["userId", "movieId", "rating", "timestamp"]


@pytest.mark.parametrize("reader", [load, load_delimited])
def test_a_recbole_inter_file_reads_its_columns_by_name(tmp_path, reader):
    path = write(tmp_path, "ml.inter", table("\t", RECBOLE))
    assert timed_pairs(reader(path)) == ALL
    # the threshold reads the rating column, not the timestamp
    assert timed_pairs(reader(path, rating_threshold=4)) == KEPT_AT_4


@pytest.mark.parametrize("reader", [load, load_delimited])
def test_a_movielens_csv_reads_its_columns_by_name(tmp_path, reader):
    path = write(tmp_path, "ratings.csv", table(",", MOVIELENS))
    assert timed_pairs(reader(path, rating_threshold=4)) == KEPT_AT_4
    assert timed_pairs(reader(path, header=True, rating_threshold=4)) == KEPT_AT_4


def test_swapped_columns_load_by_their_header(tmp_path):
    # item first, then timestamp, user, rating: positionally this file would be read wrong
    order = (1, 3, 0, 2)
    header = ["movieId", "timestamp", "userId", "rating"]
    path = write(tmp_path, "swapped.csv", table(",", header, order))
    assert timed_pairs(load(path, rating_threshold=4)) == KEPT_AT_4
    # the same ids, not the item ids as users
    data = load(path)
    assert sorted(data.user_ids.tolist()) == [1, 2] and sorted(data.item_ids.tolist()) == [10, 11, 12]


@pytest.mark.parametrize("name, column", [
    ("USER", "user"), ("User-ID", "user"), ("uid", "user"), ("\"userId\"", "user"), ("user_id:token", "user"),
    ("ItemID", "item"), ("iid", "item"), ("movie_id", "item"), ("Score", "rating"), ("stars:float", "rating"),
    ("TS", "timestamp"), ("time", "timestamp"),
])
def test_header_names_are_matched_without_case_type_suffix_or_quotes(name, column):
    others = [c for c in ("user", "item") if c != column]
    assert parse_columns([name, *others]) == (column, *others)


def test_a_header_after_comments_is_the_first_data_line(tmp_path):
    text = "# exported by the app\n\n" + table(";", ["user", "item", "rating"], (0, 1, 2))
    data = load(write(tmp_path, "r.csv", text), rating_threshold=4)
    assert timed_pairs(data) == {(1, 10): None, (2, 10): None}


def test_header_false_reads_the_first_line_as_data(tmp_path):
    path = write(tmp_path, "r.csv", "user,item\nalice,book\n")
    assert set(timed_pairs(load(path))) == {("alice", "book")}  # a header of known names
    assert set(timed_pairs(load(path, header=False))) == {("user", "item"), ("alice", "book")}


def test_a_file_without_header_keeps_the_positional_columns(tmp_path):
    path = write(tmp_path, "r.csv", table(",", None))
    assert timed_pairs(load(path, rating_threshold=4)) == KEPT_AT_4


def test_an_unknown_header_name_is_an_error_that_lists_it_and_suggests_columns(tmp_path):
    path = write(tmp_path, "r.inter", "id\tuser_id:token\tvenue_id:token\tlabel:float\n1\t2\t3\t0\n")
    with pytest.raises(DataError) as info:
        load_delimited(path, header=True)
    message = str(info.value)
    header = "'id', 'user_id:token', 'venue_id:token', 'label:float'"
    assert f"{path}, line 1: the header {header} cannot be read" in message
    assert "'id', 'label:float' are not known column names" in message
    assert "--columns -,user,item,-" in message and "user: user, user_id" in message
    # as suggested
    assert timed_pairs(load_delimited(path, header=True, columns="-,user,item,-")) == {(2, 3): None}


@pytest.mark.parametrize("header, problem", [
    ("user,item,rating,score", "'rating' and 'score' both name the rating column"),
    ("user,rating", "no item column"),
])
def test_a_header_of_known_names_that_do_not_make_a_table_is_an_error(tmp_path, header, problem):
    path = write(tmp_path, "r.csv", f"{header}\n{','.join(['1'] * len(header.split(',')))}\n")
    with pytest.raises(DataError, match=problem):
        load_delimited(path, header=True)


def test_an_unknown_header_without_header_option_says_how_to_name_the_columns(tmp_path):
    path = write(tmp_path, "r.csv", "uzer,thing\n1,2\n3,4\n")
    with pytest.raises(DataError) as info:
        load(path)
    message = str(info.value)
    assert f"{path}, line 1: 'uzer,thing' looks like a header (the other lines have integer ids)" in message
    assert "--header --columns" in message
    assert timed_pairs(load(path, header=True, columns=["user", "item"])) == {(1, 2): None, (3, 4): None}
    # a rating that is not a number on line 1
    path = write(tmp_path, "s.csv", "visitor,venue,stars\n1,2,5\n")
    with pytest.raises(DataError, match="line 1: rating 'stars' is not a number; if line 1 is a header, its names"):
        load(path)


def test_rating_threshold_needs_a_rating_column_by_name(tmp_path):
    path = write(tmp_path, "r.csv", "user,item,timestamp\n1,2,9\n")
    with pytest.raises(ConfigError, match=r"needs a rating column \(the file's columns: user, item, timestamp\)"):
        load(path, rating_threshold=4)


def test_a_header_with_fewer_columns_than_the_rows_names_the_line(tmp_path):
    path = write(tmp_path, "r.csv", "user,item\n1,2,3\n")
    with pytest.raises(DataError, match="line 2: expected 2 columns, found 3"):
        load_delimited(path)


def test_detection_takes_a_whitespace_header_for_delimited_text(tmp_path):
    # without the header rule "2 5 7" (COUNT 2, two items) would count as users.dat
    path = write(tmp_path, "r.txt", "user item rating\n2 5 7\n3 5 1\n")
    assert detect_format(path) == "delimited"
    assert set(timed_pairs(load(path))) == {(2, 5), (3, 5)}


# ---------------------------------------------------------------- columns=

def test_columns_name_the_files_columns(tmp_path):
    path = write(tmp_path, "r.csv", table(",", None, (1, 0)))  # item, user
    assert set(timed_pairs(load(path, columns="item,user"))) == set(ALL)
    path = write(tmp_path, "s.csv", table("\t", None, (2, 0, 3, 1)))  # rating, user, timestamp, item
    assert timed_pairs(load(path, columns=["rating", "user", "timestamp", "item"], rating_threshold=4)) == KEPT_AT_4
    # - and _ ignore a column
    assert timed_pairs(load(path, columns="-,user,_,item")) == {pair: None for pair in ALL}


def test_columns_skip_a_header_they_replace(tmp_path):
    path = write(tmp_path, "r.csv", "a,b,c,d\n" + table(",", None))
    assert timed_pairs(load(path, header=True, columns="user,item,rating,timestamp", rating_threshold=4)) == KEPT_AT_4
    # a known header that agrees with the columns is fine; one that disagrees is refused
    path = write(tmp_path, "s.csv", table(",", MOVIELENS))
    assert timed_pairs(load(path, columns="user,item,rating,timestamp")) == ALL
    with pytest.raises(DataError, match="the header names the columns user,item,rating,timestamp but --columns"):
        load(path, columns="item,user,rating,timestamp")
    # ... unless told to skip it
    swapped = {(i, u): t for (u, i), t in ALL.items()}
    assert timed_pairs(load(path, header=True, columns="item,user,rating,timestamp")) == swapped


@pytest.mark.parametrize("columns, problem", [
    ("user", "no item column"),
    ("item,rating", "no user column"),
    ("user,item,user", "'user' and 'user' both name the user column"),
    ("user,item_id,movieId", "'item_id' and 'movieId' both name the item column"),
    ("user,item,weight", "unknown column name 'weight'"),
    ("user,,item", "an empty column name"),
    (["user", 3], "expected names such as"),
])
def test_columns_are_validated(columns, problem):
    with pytest.raises(ConfigError, match=problem):
        parse_columns(columns)


def test_columns_must_name_every_column_of_the_file(tmp_path):
    path = write(tmp_path, "r.csv", table(",", None))
    with pytest.raises(DataError, match=r"line 1: --columns \(columns=\) names 2 columns, the line has 4"):
        load(path, columns="user,item")


def test_columns_do_not_apply_to_users_dat(tmp_path):
    path = write(tmp_path, "users.dat", "2 1 2\n1 3\n")
    with pytest.raises(ConfigError, match="apply to delimited text, not users.dat .the file was detected as users.dat"):
        load(path, columns="user,item")


_ALIAS = {column: st.sampled_from(aliases) for column, aliases in COLUMN_NAMES.items()}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.permutations([0, 1, 2, 3, None]), sep=st.sampled_from(["\t", ",", ";", "|", " "]),
       names=st.fixed_dictionaries(_ALIAS), upper=st.booleans(), recbole=st.booleans())
def test_any_column_order_reads_the_same_by_header_or_by_columns(tmp_path, order, sep, names, upper, recbole):
    """Columns in any order, with one to ignore (None): a header of any known
    aliases, or columns= without a header, gives the positional file's data."""
    roles = ("user", "item", "rating", "timestamp")
    ignored = [str(7 + k) for k in range(len(ROWS))]  # a column of junk numbers
    rows = [tuple(row[k] if k is not None else ignored[r] for k in order) for r, row in enumerate(ROWS)]
    expected = load(write(tmp_path, "plain.csv", table(",", None)), rating_threshold=4)

    def name(k):
        text = names[roles[k]]
        text = text.upper() if upper else text
        return f"{text}:token" if recbole else text

    header = [name(k) if k is not None else "-" for k in order]
    # a header cannot name a column to ignore: the file then has it named, and columns= skips it
    columns = [roles[k] if k is not None else "-" for k in order]
    body = "\n".join(sep.join(row) for row in rows) + "\n"
    with_header = write(tmp_path, "h.txt", sep.join(h if h != "-" else "extra" for h in header) + "\n" + body)
    skipped = [name(k) if k is not None else "-" for k in order]
    assert same(load(with_header, header=True, columns=skipped, rating_threshold=4), expected)
    without = write(tmp_path, "n.txt", body)
    assert same(load(without, columns=columns, rating_threshold=4), expected)
    # a header of known names only (the ignored column dropped from the file)
    kept = [k for k in order if k is not None]
    known = write(tmp_path, "k.txt", sep.join(name(k) for k in kept) + "\n"
                  + "\n".join(sep.join(row[k] for k in kept) for row in ROWS) + "\n")
    assert same(load(known, rating_threshold=4), expected)


# ---------------------------------------------------------------- gzip

def test_a_gzip_file_reads_like_the_plain_one(tmp_path):
    text = table("\t", RECBOLE)
    plain = write(tmp_path, "ml.inter", text)
    packed = tmp_path / "ml.inter.gz"
    packed.write_bytes(gzip.compress(text.encode()))
    for reader in (load, load_delimited):
        assert same(reader(packed, rating_threshold=4), reader(plain, rating_threshold=4))
    assert detect_format(packed) == "delimited"
    # by its content, not its name
    unnamed = tmp_path / "ml.data"
    unnamed.write_bytes(packed.read_bytes())
    assert same(load(unnamed), load(plain))


def test_a_users_dat_gz_reads_like_users_dat(tmp_path):
    text = "3 10 52 7\n0\n2 52 8\n"
    plain = write(tmp_path, "users.dat", text)
    packed = tmp_path / "users.dat.gz"
    packed.write_bytes(gzip.compress(text.encode()))
    assert detect_format(packed) == "users.dat"
    for reader in (load, load_users_dat):
        data = reader(packed)
        assert same(data, reader(plain)) and data.name == f"{tmp_path.name}/users.dat.gz"
        assert set(timed_pairs(data)) == {(0, 10), (0, 52), (0, 7), (2, 52), (2, 8)}


def test_the_real_users_dat_gzipped_has_the_same_fingerprint(tmp_path):
    path = DATA / "citeulike-a" / "users.dat"
    if not path.exists():
        pytest.skip(f"{path} not present")
    packed = tmp_path / "users.dat.gz"
    packed.write_bytes(gzip.compress(path.read_bytes(), compresslevel=1))
    assert load(packed).fingerprint() == load(path).fingerprint() == "f4f0e90cba1b2f8bb129e04606c9bd4b"


def test_a_damaged_or_empty_gzip_file_is_named(tmp_path):
    text = "".join(f"{u},{u % 7}\n" for u in range(20000)).encode()
    packed = gzip.compress(text)
    truncated = tmp_path / "cut.csv.gz"
    truncated.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DataError, match="cut.csv.gz, after line [0-9]+: the gzip data is damaged or truncated"):
        load_delimited(truncated)
    empty = tmp_path / "empty.csv.gz"
    empty.write_bytes(gzip.compress(b""))
    for reader in (load, load_delimited, load_users_dat, detect_format):
        with pytest.raises(DataError, match="empty.csv.gz: the file is empty .once gunzipped."):
            reader(empty)


# ---------------------------------------------------------------- binary files

def _zip(path: Path, names: list[str]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name in names:
            archive.writestr(name, "1,2\n")
    return path


BINARIES = [
    ("ratings.parquet", lambda p: p.write_bytes(b"PAR1\x15\x04\x15\x00\x00\x00\x00PAR1"),
     "is a Parquet file, not text; convert it to CSV/TSV, e.g. with pandas: pandas.read_parquet("),
    ("ratings.zip", lambda p: _zip(p, ["ml/ratings.csv"]),
     "is a zip archive (its first member: ml/ratings.csv), not text; unzip it"),
    ("ratings.xlsx", lambda p: _zip(p, ["[Content_Types].xml", "xl/workbook.xml"]),
     "is an Excel workbook (.xlsx), not text; save the sheet as CSV"),
    ("ratings.feather", lambda p: p.write_bytes(b"ARROW1\x00\x00" + bytes(64)), "is an Arrow/Feather file"),
    ("ratings.h5", lambda p: p.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64)), "is an HDF5 file"),
    ("ratings.csv.bz2", lambda p: p.write_bytes(b"BZh91AY&SY" + bytes(16)), "is compressed with bzip2"),
    ("ratings.csv", lambda p: p.write_bytes("1,2\n3,4\n".encode("utf-16")),
     "is UTF-16 text, not UTF-8 text; save it as UTF-8"),
    ("ratings.csv.gz", lambda p: p.write_bytes(gzip.compress(b"PAR1\x15\x04\x00\x00PAR1")),
     "is a Parquet file (inside gzip), not text"),
]


@pytest.mark.parametrize("name, make, message", BINARIES, ids=[b[0] for b in BINARIES])
def test_a_binary_format_is_refused_by_name_by_every_reader(tmp_path, name, make, message):
    path = tmp_path / name
    make(path)
    for reader in (load, load_delimited, load_users_dat, detect_format):
        with pytest.raises(DataError) as info:
            reader(path)
        assert str(info.value).startswith(f"{path} {message}"), str(info.value)
    if "Parquet" in message:
        assert f"pandas.read_parquet('{path}').to_csv('ratings.csv', index=False)" in str(info.value)


def test_nul_bytes_in_the_first_kilobyte_are_refused_before_any_line_is_parsed(tmp_path):
    path = tmp_path / "data.bin"
    # line 1 would be a malformed users.dat line: the binary content is said first
    path.write_bytes(b"5 1 2\nabc\x00\x01\x02\n")
    for reader in (load, load_delimited, load_users_dat, detect_format):
        with pytest.raises(DataError, match=r"data.bin, line 2: holds a NUL byte \(is this a binary file\?\)"):
            reader(path)


def test_text_that_starts_like_a_signature_is_still_text(tmp_path):
    # a user called PAR1 (no NUL, no PAR1 at the end), a user called BZh9
    path = write(tmp_path, "r.csv", "PAR1,a\nBZh9,b\nPK,c\n")
    assert set(timed_pairs(load(path))) == {("PAR1", "a"), ("BZh9", "b"), ("PK", "c")}


# ---------------------------------------------------------------- command line

def _data_of(*argv: str) -> Interactions:
    args = cli.build_parser().parse_args(["train", *map(str, argv)])
    return cli._load_data(args)


def test_the_command_line_reads_columns_header_and_gzip(tmp_path):
    path = write(tmp_path, "r.tsv", table("\t", None, (1, 0, 3, 2)))  # item, user, timestamp, rating
    data = _data_of("--data", path, "--columns", "item,user,timestamp,rating", "--rating-threshold", "4")
    assert timed_pairs(data) == KEPT_AT_4
    named = write(tmp_path, "named.csv", "movieId,userId,timestamp,rating\n" + table(",", None, (1, 0, 3, 2)))
    packed = tmp_path / "named.csv.gz"
    packed.write_bytes(gzip.compress(named.read_bytes()))
    assert timed_pairs(_data_of("--data", packed, "--rating-threshold", "4")) == KEPT_AT_4
    first_is_data = write(tmp_path, "pairs.csv", "user,item\nalice,book\n")
    assert len(_data_of("--data", first_is_data, "--no-header")) == 2
    assert len(_data_of("--data", first_is_data)) == 1


def _cli_error(capsys, *argv) -> str:
    try:
        code = cli.main([*map(str, argv)])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("rankdistill: error: "), err
    return err[-1]


def test_command_line_mistakes_in_columns_are_one_line(capsys, tmp_path):
    path = write(tmp_path, "r.csv", "1,2\n")
    line = _cli_error(capsys, "train", "--data", path, "--columns", "user,user", "--out", tmp_path / "run")
    assert line == ("rankdistill: error: argument --columns: columns 'user,user': 'user' and 'user' both name the "
                    "user column")
    line = _cli_error(capsys, "train", "--columns", "user,item", "--out", tmp_path / "run")
    assert "--columns and --rating-threshold need --data" in line
    parquet = tmp_path / "r.parquet"
    parquet.write_bytes(b"PAR1\x00\x00PAR1")
    line = _cli_error(capsys, "train", "--data", parquet, "--out", tmp_path / "run")
    assert line.startswith(f"rankdistill: error: {parquet} is a Parquet file, not text; convert it to CSV/TSV")
    assert not (tmp_path / "run").exists()
