"""Loaders, the Interactions container, k-core filtering, the synthetic generator."""

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
    with pytest.raises(DataError, match="no interactions"):
        load_users_dat(write(tmp_path, "empty.dat", ""))


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
    ],
)
def test_delimited_malformed_names_line(tmp_path, text, line, problem):
    path = write(tmp_path, "r.csv", text)
    with pytest.raises(DataError) as info:
        load_delimited(path)
    assert f"{path}, line {line}: {problem}" in str(info.value)


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


def test_citeulike_matches_its_readme():
    path = DATA / "citeulike-a" / "users.dat"
    if not path.exists():
        pytest.skip(f"{path} not present")
    data = load(path)
    assert (data.n_users, data.n_items, len(data)) == (5551, 16980, 204986)
    assert data.user_counts().min() >= 10


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
