"""Loaders, the Interactions container, k-core filtering, the synthetic generator."""

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from rankdistill.data import (
    DataError,
    Interactions,
    detect_format,
    kcore,
    load,
    load_delimited,
    load_users_dat,
    synthetic,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def pairs_in_file_ids(data: Interactions) -> set[tuple]:
    """The interactions expressed with the file's own ids."""
    return {(data.user_ids[u].item(), data.item_ids[i].item()) for u, i in zip(data.users, data.items)}


# ---------------------------------------------------------------- users.dat

def test_users_dat_round_trip_keeps_file_ids(tmp_path):
    # line 2 is empty and line 4 is "0": users 1 and 3 have no interactions.
    path = write(tmp_path, "users.dat", "2 5 7\n\n3 7 0 9\n0\n1 5\n")
    data = load_users_dat(path)
    assert pairs_in_file_ids(data) == {(0, 5), (0, 7), (2, 7), (2, 0), (2, 9), (4, 5)}
    assert (data.n_users, data.n_items, len(data)) == (3, 4, 6)
    assert data.user_ids.tolist() == [0, 2, 4]  # line numbers (0-based) of the users kept
    assert data.item_ids.tolist() == [0, 5, 7, 9]
    assert data.timestamps is None


def test_users_dat_repeated_item_is_kept_once(tmp_path):
    data = load_users_dat(write(tmp_path, "users.dat", "3 4 4 2\n"))
    assert sorted(data.item_ids[data.items].tolist()) == [2, 4]


@pytest.mark.parametrize(
    "text, line, problem",
    [
        ("2 1 2\n3 1 2\n", 2, "COUNT is 3 but the line lists 2 items"),
        ("2 1 2\n\n1 x\n", 3, "item id 'x' is not an integer"),
        ("1 1.5\n", 1, "item id '1.5' is not an integer"),
        ("2 1 2\n2 3 -4\n", 2, "item id -4 is negative"),
        ("a 1\n", 1, "COUNT 'a' is not an integer"),
    ],
)
def test_users_dat_malformed_names_file_line_and_problem(tmp_path, text, line, problem):
    path = write(tmp_path, "users.dat", text)
    with pytest.raises(DataError) as info:
        load_users_dat(path)
    message = str(info.value)
    assert str(path) in message and f"line {line}:" in message and problem in message
    assert isinstance(info.value, ValueError)


def test_users_dat_without_interactions_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no interactions"):
        load_users_dat(write(tmp_path, "users.dat", "0\n\n0\n"))


def test_empty_file_is_named_as_empty_by_every_reader(tmp_path):
    path = write(tmp_path, "empty.dat", "")
    for reader in (load_users_dat, load_delimited, load, detect_format):
        with pytest.raises(DataError, match=f"{path}: the file is empty"):
            reader(path)


def test_users_dat_memory_grows_with_interactions_not_with_the_largest_id(tmp_path):
    # Re-indexing through arrays indexed by id allocated 8 bytes per id up to
    # the largest: 2.4 GB for this 20-byte file.
    path = write(tmp_path, "users.dat", "2 300000000 5\n1 5\n")
    tracemalloc.start()
    try:
        data = load_users_dat(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100e6
    assert pairs_in_file_ids(data) == {(0, 300000000), (0, 5), (1, 5)}
    assert (data.n_users, data.n_items) == (2, 2)


def test_users_dat_item_ids_up_to_2_63_minus_1_round_trip(tmp_path):
    largest = 2**63 - 1
    data = load(write(tmp_path, "users.dat", f"2 {largest} 1000000000000\n1 0\n"))
    assert data.item_ids.tolist() == [0, 10**12, largest]
    assert data.item_ids.dtype == np.int64
    assert pairs_in_file_ids(data) == {(0, largest), (0, 10**12), (1, 0)}


@pytest.mark.parametrize("token", [str(2**63), "1" * 5000])
def test_users_dat_item_id_beyond_2_63_minus_1_names_the_line(tmp_path, token):
    path = write(tmp_path, "users.dat", f"1 4\n2 3 {token}\n")
    with pytest.raises(DataError) as info:
        load_users_dat(path)
    message = str(info.value)
    assert f"{path}, line 2: item id {token[:20]}" in message and "larger than 2^63-1" in message
    assert len(message) < len(str(path)) + 100  # a 5,000-digit id is shortened


def test_missing_file_is_file_not_found_with_path(tmp_path):
    missing = tmp_path / "nope" / "users.dat"
    for loader in (load_users_dat, load_delimited, load):
        with pytest.raises(FileNotFoundError) as info:
            loader(missing)
        assert str(missing) in str(info.value)


# ---------------------------------------------------------------- delimited

def test_delimited_with_header_threshold_and_latest_timestamp(tmp_path):
    text = "user,item,rating,time\nu1,a,5,100\nu1,b,2,101\nu2,a,4,50\nu2,a,5,70\nu3,b,1,10\n"
    data = load_delimited(write(tmp_path, "r.csv", text), header=True, rating_threshold=4)
    assert pairs_in_file_ids(data) == {("u1", "a"), ("u2", "a")}
    assert data.n_users == 2 and data.n_items == 1  # u3 and b have no kept interaction
    times = {(data.user_ids[u], data.item_ids[i]): t for u, i, t in zip(data.users, data.items, data.timestamps)}
    assert times == {("u1", "a"): 100.0, ("u2", "a"): 70.0}  # the repeated pair keeps its latest time


@pytest.mark.parametrize("sep", ["\t", "::", " ", ";"])
def test_delimited_separator_is_detected(tmp_path, sep):
    data = load_delimited(write(tmp_path, "r.txt", f"10{sep}3\n11{sep}3\n10{sep}4\n"))
    assert pairs_in_file_ids(data) == {(10, 3), (11, 3), (10, 4)}
    assert data.user_ids.dtype == np.int64  # integer ids stay integers


@pytest.mark.parametrize(
    "text, line, problem",
    [
        ("1,2\n1,2,3\n", 2, "expected 2 columns, found 3"),
        ("1,2,x\n", 1, "rating 'x' is not a number"),
        ("1,2,3,later\n", 1, "timestamp 'later' is not a number"),
        ("1,2,3,4,5\n", 1, "expected 2 to 4 columns"),
        ("1,2\n,3\n", 2, "empty user or item id"),
        ("1,2,3,100\n1,3,3,nan\n", 2, "timestamp 'nan' is not a finite number"),  # was held out as the latest
        ("1,2,3,100\n1,3,3,inf\n", 2, "timestamp 'inf' is not a finite number"),
        ("1,2,-inf,100\n", 1, "rating '-inf' is not a finite number"),
    ],
)
def test_delimited_malformed_names_line(tmp_path, text, line, problem):
    path = write(tmp_path, "r.csv", text)
    with pytest.raises(DataError) as info:
        load_delimited(path)
    assert f"{path}, line {line}: {problem}" in str(info.value)


def test_delimited_integer_ids_beyond_int64_keep_their_column_as_strings(tmp_path):
    huge = str(2**64)
    data = load_delimited(write(tmp_path, "r.csv", f"1,{huge}\n2,5\n2,{huge}\n"))
    assert data.item_ids.dtype.kind == "U" and data.user_ids.dtype == np.int64
    assert pairs_in_file_ids(data) == {(1, huge), (2, "5"), (2, huge)}
    data = load_delimited(write(tmp_path, "s.csv", f"-{2**63 + 1},7\n{'9' * 5000},7\n"))
    assert set(data.user_ids.tolist()) == {f"-{2**63 + 1}", "9" * 5000}


@pytest.mark.parametrize(
    "text, problem",
    [
        ("uzer,thing\n1,2\n3,4\n", "'uzer,thing' looks like a header"),
        ("uzer\tthing\nalice\t2\nbob\t3\n", "'uzer\\tthing' looks like a header"),
        ("uzer,thing,stars\n1,2,5\n", "rating 'stars' is not a number; if line 1 is a header"),
    ],
)
def test_delimited_unknown_header_without_header_option_says_how_to_name_the_columns(tmp_path, text, problem):
    path = write(tmp_path, "r.csv", text)
    for reader in (load_delimited, load):
        with pytest.raises(DataError) as info:
            reader(path)
        assert f"{path}, line 1: {problem}" in str(info.value)
        assert "--header --columns user,item" in str(info.value)
    columns = ["user", "item", "rating"][: len(text.split("\n")[1].replace("\t", ",").split(","))]
    assert len(load_delimited(path, header=True, columns=columns)) == text.count("\n") - 1


@pytest.mark.parametrize("text", ["user,item\n1,2\n3,4\n", "user\titem\nalice\t2\nbob\t3\n",
                                  "user,item,rating\n1,2,5\n"])
def test_delimited_header_of_known_names_is_used_without_header_option(tmp_path, text):
    # before: an error suggesting --header; a header of known column names is now read as one
    path = write(tmp_path, "r.csv", text)
    for reader in (load_delimited, load):
        assert len(reader(path)) == text.count("\n") - 1
    assert len(load_delimited(path, header=True)) == text.count("\n") - 1


def test_delimited_header_after_a_comment_is_the_header(tmp_path):
    # --header (and the detection) take the first line that is neither empty nor a comment
    for text in ("# from the app\nuser,item\n1,2\n3,4\n", "#\nuser;item;rating\n1;2;5\n"):
        for header in (None, True):
            data = load_delimited(write(tmp_path, "r.csv", text), header=header)
            assert len(data) == text.count("\n") - 2 and data.user_ids.dtype == np.int64


def test_delimited_string_ids_are_not_taken_for_a_header(tmp_path):
    data = load_delimited(write(tmp_path, "r.csv", "alice,book\nbob,pen\n"))
    assert pairs_in_file_ids(data) == {("alice", "book"), ("bob", "pen")}


def test_delimited_threshold_needs_ratings_and_survivors(tmp_path):
    with pytest.raises(ValueError, match="rating column"):
        load_delimited(write(tmp_path, "a.csv", "1,2\n"), rating_threshold=3)
    with pytest.raises(DataError, match="no interaction has a rating >= 4"):
        load_delimited(write(tmp_path, "b.csv", "1,2,3\n"), rating_threshold=4)


def test_format_detection(tmp_path):
    assert detect_format(write(tmp_path, "a", "2 1 2\n\n1 0\n")) == "users.dat"
    assert detect_format(write(tmp_path, "b", "1 2\n3 4\n")) == "delimited"  # COUNT would be wrong on line 2
    assert detect_format(write(tmp_path, "c", "1,2\n")) == "delimited"
    assert detect_format(write(tmp_path, "d", "2 1 2\n3 1\n")) == "users.dat"  # lengths vary: a bad users.dat
    assert len(load(tmp_path / "a")) == 3
    assert len(load(tmp_path / "b")) == 2


@pytest.mark.parametrize(
    "text, line, problem",
    [
        # lines of varying length whose COUNTs match: users.dat with a typo on line 7
        ("3 1 2 5\n2 1 2\n1 4\n2 4 9\n1 0\n0\n3 5 12x 8\n", 7, "item id '12x' is not an integer"),
        ("2 1 2\n2 3 -4\n", 2, "item id -4 is negative"),  # read as user, item, rating before
        ("x 1 2\n3 4 5 6\n1 7\n2 8 9\n", 1, "COUNT 'x' is not an integer"),
        ("3 1 2 3\n1 1.5\n", 2, "item id '1.5' is not an integer"),
    ],
)
def test_detection_reads_a_users_dat_with_a_bad_id_as_users_dat(tmp_path, text, line, problem):
    path = write(tmp_path, "users.dat", text)
    assert detect_format(path) == "users.dat"
    with pytest.raises(DataError) as info:
        load(path)
    message = str(info.value)
    assert f"{path}, line {line}: {problem}" in message and "looks like users.dat" in message


@pytest.mark.parametrize(
    "text",
    [
        "u1 a 5\nu2 b 3\n",  # whitespace-separated, string ids
        "2\tNew York\n3\tParis\n",  # a tab and a space: COUNT 2 would match line 1
        "1,2\n3,4\n",
    ],
)
def test_detection_keeps_delimited_text_delimited(tmp_path, text):
    assert detect_format(write(tmp_path, "r.txt", text)) == "delimited"


def test_byte_order_mark_is_skipped_by_every_reader(tmp_path):
    bom = "\ufeff"
    users_dat = write(tmp_path, "users.dat", bom + "2 1 2\n1 3\n")
    assert detect_format(users_dat) == "users.dat"
    for reader in (load_users_dat, load):
        assert pairs_in_file_ids(reader(users_dat)) == {(0, 1), (0, 2), (1, 3)}
    csv = write(tmp_path, "r.csv", bom + "10,3\n11,4\n")
    for reader in (load_delimited, load):
        data = reader(csv)
        assert data.user_ids.dtype == np.int64  # "\ufeff10" would make the column strings
        assert pairs_in_file_ids(data) == {(10, 3), (11, 4)}


def test_windows_line_endings_and_blank_lines_read_like_plain_ones(tmp_path):
    # pins behaviour that already held: "\r" and whitespace-only lines are blank
    users_dat = write(tmp_path, "users.dat", "2 1 2\n \t \n1 3\n")
    crlf = tmp_path / "crlf.dat"
    crlf.write_bytes(users_dat.read_bytes().replace(b"\n", b"\r\n"))
    for path in (users_dat, crlf):
        data = load(path)
        assert pairs_in_file_ids(data) == {(0, 1), (0, 2), (2, 3)}
    csv = tmp_path / "r.csv"
    csv.write_bytes(b"u,i,1\r\n  \r\nv,j,2\r\n")
    assert pairs_in_file_ids(load(csv)) == {("u", "i"), ("v", "j")}


def test_directory_is_named_as_such_by_every_reader(tmp_path):
    # an OSError like a missing file: the command line prints it as one line
    for reader in (load_users_dat, load_delimited, load, detect_format):
        with pytest.raises(IsADirectoryError) as info:
            reader(tmp_path)
        assert info.value.filename == str(tmp_path)


def test_citeulike_matches_its_readme_and_its_fingerprint():
    path = DATA / "citeulike-a" / "users.dat"
    if not path.exists():
        pytest.skip(f"{path} not present")
    data = load(path)
    assert (data.n_users, data.n_items, len(data)) == (5551, 16980, 204986)
    assert data.user_counts().min() >= 10
    # split files store the fingerprint: this value was computed with the loader
    # before it re-indexed through np.unique
    assert data.fingerprint() == "f4f0e90cba1b2f8bb129e04606c9bd4b"


# ---------------------------------------------------------------- container

def test_container_rejects_empty_zero_sized_and_repeated():
    with pytest.raises(DataError, match="no interactions"):
        Interactions(2, 2, np.array([], dtype=np.int64), np.array([], dtype=np.int64))
    with pytest.raises(DataError, match="at least one user"):
        Interactions(0, 2, [0], [1])
    with pytest.raises(DataError, match="repeated"):
        Interactions(2, 2, [0, 0], [1, 1])
    with pytest.raises(DataError, match="item ids must lie in"):
        Interactions(2, 2, [0], [2])


def test_csr_lists_each_users_items_sorted():
    data = Interactions(3, 5, [2, 0, 2, 0], [4, 3, 1, 0])
    indptr, indices = data.to_csr()
    assert indptr.tolist() == [0, 2, 2, 4]
    assert indices.tolist() == [0, 3, 1, 4]


def test_kcore_repeats_until_stable():
    # user 2 has 1 item -> dropped; then item 9 has 1 user -> dropped;
    # then user 1 has 1 item -> dropped. Users 0 and 3 with items 7, 8 remain.
    users = [0, 0, 1, 1, 2, 3, 3]
    items = [7, 8, 8, 9, 9, 7, 8]
    data = Interactions(4, 10, users, items)
    core = kcore(data, min_user=2, min_item=2)
    assert pairs_in_file_ids(core) == {(0, 7), (0, 8), (3, 7), (3, 8)}
    assert (core.n_users, core.n_items) == (2, 2)
    with pytest.raises(DataError, match="no interactions survive"):
        kcore(data, min_user=5)


def test_fingerprint_ignores_order_but_not_content():
    a = Interactions(3, 3, [0, 1, 2], [1, 2, 0])
    b = Interactions(3, 3, [2, 0, 1], [0, 1, 2])
    c = Interactions(3, 3, [0, 1, 2], [1, 2, 1])
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


# ---------------------------------------------------------------- synthetic

def test_synthetic_is_seeded_sized_and_skewed():
    a = synthetic(300, 200, n_factors=8, mean_interactions=20, min_interactions=5, seed=1)
    b = synthetic(300, 200, n_factors=8, mean_interactions=20, min_interactions=5, seed=1)
    c = synthetic(300, 200, n_factors=8, mean_interactions=20, min_interactions=5, seed=2)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    counts = a.user_counts()
    assert a.n_users == 300 and counts.min() >= 5
    assert 15 < counts.mean() < 25
    item_counts = np.sort(a.item_counts())[::-1]
    assert item_counts[:20].sum() > 4 * item_counts[-20:].sum()  # popularity skew


def test_bytes_that_are_not_text_name_the_line(tmp_path):
    path = tmp_path / "users.dat"
    path.write_bytes(b"2 1 2\n1 \xff\xfe\n")
    with pytest.raises(DataError, match=r"line 2: not UTF-8 text"):
        load_users_dat(path)


def test_interactions_refuse_timestamps_that_are_not_finite():
    for bad in (np.nan, np.inf):
        with pytest.raises(DataError, match="timestamps must be finite numbers"):
            Interactions(1, 2, np.array([0, 0]), np.array([0, 1]), timestamps=np.array([1.0, bad]))
