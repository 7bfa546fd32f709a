"""read_table: formats, column mapping, and malformed input located by file:line."""
from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest

from tfmf.data.readers import read_table
from tfmf.errors import DataError


def _write(tmp_path, name: str, content: str | bytes):
    p = tmp_path / name
    p.write_bytes(content.encode() if isinstance(content, str) else content)
    return p


def _expect(path, line, fragment, **kw):
    with pytest.raises(DataError) as ei:
        read_table(path, **kw)
    err = ei.value
    assert err.path == str(path)
    assert err.line == line, str(err)
    assert fragment in str(err).lower(), str(err)
    assert str(path) in str(err) and (line is None or f":{line}:" in str(err))
    return err


# (file name, content, read_table kwargs, expected line, message fragment)
MALFORMED = [
    ("nonnum_rating.csv", "1,10,5,100\n2,20,abc,200\n", {}, 2, "non-numeric rating"),
    ("nonnum_ts.csv", "1,10,5,100\n2,20,3,xyz\n", {}, 2, "non-numeric timestamp"),
    ("few.csv", "1,10,5,100\n2,20,3,200\n3,30\n", {}, 3, "too few fields"),
    ("many.csv", "1,10,5,100\n2,20,3,4,5\n", {}, 2, "too many fields"),
    ("wrongdelim.tsv", "1\t10\t5\n2\t20\t3\n", {"delimiter": ","}, 1, "one column"),
    ("nan.csv", "1,10,5\n2,20,4\n3,30,nan\n", {}, 3, "nan"),
    ("inf.csv", "1,10,5\n2,20,inf\n", {}, 2, "infinite"),
    ("scale.csv", "1,10,5\n2,20,4\n3,30,1\n4,40,6\n", {"rating_scale": (1, 5)}, 4, "outside"),
    ("header_only.csv", "user,item,rating\n", {}, 1, "header only"),
    ("negative.csv", "1,10,5\n-3,10,5\n", {}, 2, "negative user id"),
    ("overflow_u64.csv", "1,10,5\n2,9223372036854775808,5\n", {}, 2, "overflows int64"),
    ("overflow_big.csv", "1,10,5\n99999999999999999999,10,5\n", {}, 2, "overflows int64"),
    ("dup.csv", "1,10,5\n1,20,4\n2,10,3\n1,10,2\n", {}, 4, "first seen at line 1"),
    ("header_counts.csv", "userId,movieId,rating\n1,10,5\n1,11,bad\n", {}, 3, "non-numeric"),
    ("blank_lines.csv", "1,10,5\n\n\n2,20,x\n", {}, 4, "non-numeric"),
    ("missing_col.csv", "user,item,rating\n1,10,5\n", {"columns": {"rating": "score"}}, 1,
     "missing column 'score'"),
    ("colons.dat", "1::10::5::100\n2::20::5\n", {}, 2, "too few fields"),
    ("spaces.txt", "1 10 5\n2 20 five\n", {}, 2, "non-numeric rating"),
    ("missing_rating.csv", "1,10\n2,20\n", {}, 1, "missing rating column"),
]


@pytest.mark.parametrize("name,content,kw,line,fragment", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_input_names_file_and_line(tmp_path, name, content, kw, line, fragment):
    _expect(_write(tmp_path, name, content), line, fragment, **kw)


def test_empty_file(tmp_path):
    _expect(_write(tmp_path, "empty.csv", ""), None, "empty")
    _expect(_write(tmp_path, "blank.csv", "\n\n  \n"), None, "empty")


def test_truncated_and_corrupt_gzip(tmp_path):
    good = gzip.compress(("".join(f"{u},{u % 7},3\n" for u in range(5000))).encode(), mtime=0)
    _expect(_write(tmp_path, "trunc.csv.gz", good[: len(good) // 2]), None, "gzip")
    _expect(_write(tmp_path, "corrupt.csv.gz", b"this is not gzip at all\n"), None, "gzip")


def test_duplicate_policies(tmp_path):
    p = _write(tmp_path, "d.csv", "1,10,5,100\n1,20,4,100\n1,10,2,300\n")
    last = read_table(p, duplicates="last")
    assert last.nnz == 2 and last.values[0] == 2 and last.timestamps[0] == 300
    mean = read_table(p, duplicates="mean")
    assert mean.values[0] == pytest.approx(3.5) and mean.timestamps[0] == 300


def test_formats_and_mapping(tmp_path):
    rows = "u,i,r,t\n"
    text = "userId,movieId,rating,timestamp\n3,30,4.5,7\n1,10,1,5\n2,10,2,6\n"
    expect_users = np.array([1, 2, 3])
    for name, content, kw in [
        ("a.csv", text, {}),
        ("a.tsv", text.replace(",", "\t"), {}),
        ("a.dat", text.split("\n", 1)[1].replace(",", "::"), {}),
        ("a.txt", text.split("\n", 1)[1].replace(",", "   "), {}),
        ("a.csv.gz", gzip.compress(text.encode(), mtime=0), {}),
        ("b.csv", rows + "3,30,4.5,7\n1,10,1,5\n2,10,2,6\n",
         {"columns": {"user": "u", "item": "i", "rating": "r", "timestamp": "t"}}),
        ("c.csv", "30,3,4.5\n10,1,1\n10,2,2\n", {"columns": {"user": 1, "item": 0, "rating": 2}}),
    ]:
        d = read_table(_write(tmp_path, name, content), **kw)
        np.testing.assert_array_equal(d.user_ids, expect_users, err_msg=name)
        np.testing.assert_array_equal(d.item_ids, [10, 30], err_msg=name)
        assert d.values[d.users == 2][0] == 4.5, name


def test_string_ids_and_implicit(tmp_path):
    d = read_table(_write(tmp_path, "s.csv", "alice,x1\nbob,x2\nalice,x2\n"), implicit=True,
                   header=False)
    assert d.implicit and list(d.user_ids) == ["alice", "bob"] and d.nnz == 3
    assert np.all(d.values == 1.0) and d.timestamps is None


def test_parquet(tmp_path):
    p = tmp_path / "r.parquet"
    pd.DataFrame({"user": [1, 2, 2], "item": ["a", "b", "a"], "rating": [1.0, 2.0, 3.0]}
                 ).to_parquet(p)
    d = read_table(p)
    assert d.nnz == 3 and list(d.item_ids) == ["a", "b"]
    pd.DataFrame({"user": [1, 2], "item": [1, 2], "rating": [1.0, np.nan]}).to_parquet(p)
    _expect(p, 2, "nan")
    _expect(_write(tmp_path, "bad.parquet", b"PAR1garbage"), None, "parquet")


def test_latin1_crlf_and_leading_blank_lines(tmp_path):
    p = _write(tmp_path, "l.csv", "\r\nuser,item,rating\r\nJos\xe9,a,4\r\nZo\xeb,b,bad\r\n"
               .encode("latin-1"))
    err = _expect(p, 4, "non-numeric")
    assert "bad" in str(err)
    p = _write(tmp_path, "ok.csv", "user,item,rating\r\nJos\xe9,a,4\r\n".encode("latin-1"))
    assert list(read_table(p).user_ids) == ["Jos\xe9"]


# ----------------------------------------------------------------------------- delimiters
ROWS = [(1, 10, 5.0, 100), (2, 20, 3.5, 200), (3, 10, 1.0, 300)]


@pytest.mark.parametrize("name,delim", [
    ("semi.csv", ";"), ("pipe.csv", "|"), ("tab.csv", "\t"), ("comma.txt", ","),
    ("spaces.csv", "  "), ("semi.txt", ";"), ("pipe.dat", "|"), ("euro.csv", ";")])
@pytest.mark.parametrize("with_header", [True, False])
def test_delimiters_are_sniffed(tmp_path, name, delim, with_header):
    def fmt(v):  # European decimals keep a comma inside the ';'-separated fields
        return str(v).replace(".", ",") if name == "euro.csv" and isinstance(v, float) else str(v)

    text = (delim.join(["userId", "movieId", "rating", "timestamp"]) + "\n" if with_header
            else "") + "".join(delim.join(fmt(v) for v in r) + "\n" for r in ROWS)
    if name == "euro.csv":  # split on ';', so the decimal comma is named, not mis-split
        _expect(_write(tmp_path, name, text), 1 + with_header, "non-numeric rating '5,0'")
        return
    d = read_table(_write(tmp_path, name, text))
    np.testing.assert_array_equal(d.user_ids, [1, 2, 3])
    np.testing.assert_array_equal(d.item_ids, [10, 20])
    np.testing.assert_allclose(d.values, [5.0, 3.5, 1.0])
    np.testing.assert_array_equal(d.timestamps, [100, 200, 300])


def test_timestamps_with_spaces_keep_the_real_delimiter(tmp_path):
    p = _write(tmp_path, "t.txt", "1\t10\t5\t2001-01-01 10:00\n2\t20\t4\t2001-01-02 11:00\n")
    _expect(p, 1, "non-numeric timestamp '2001-01-01 10:00'")  # tab, not runs of spaces


# ----------------------------------------------------------------------------- not a table
def test_directory_other_formats_and_binary_each_have_a_message(tmp_path):
    import zipfile

    folder = tmp_path / "ml-latest-small"
    folder.mkdir()
    _expect(folder, None, "is a directory, not a ratings file")
    _expect(_write(tmp_path, "r.csv", b"\x89PNG\r\n\x1a\n" + bytes(40)), None, "png image")
    with zipfile.ZipFile(tmp_path / "r.zip", "w") as z:
        z.writestr("ratings.csv", "1,1,1\n")
    _expect(tmp_path / "r.zip", None, "zip archive (unzip it first)")
    _expect(_write(tmp_path, "r.txt", b"1,2,3\n\x00\x00\x00\x01"), None, "binary data")
    _expect(_write(tmp_path, "r.bz2.csv", b"BZh91AY&SY" + bytes(20)), None, "bzip2")


def test_gzip_and_parquet_are_recognised_by_content(tmp_path):
    text = "user,item,rating\n1,10,5\n2,20,3\n"
    d = read_table(_write(tmp_path, "no_ext_gz.csv", gzip.compress(text.encode(), mtime=0)))
    assert d.nnz == 2
    p = tmp_path / "table.dat"
    pd.DataFrame({"user": [1, 2], "item": [3, 4], "rating": [1.0, 2.0]}).to_parquet(p)
    assert read_table(p).nnz == 2


# ----------------------------------------------------------------------------- many blocks
@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of ~4 KB, so a few thousand rows span many blocks (fast and slow paths mixed)."""
    from tfmf.data import readers

    monkeypatch.setattr(readers, "BLOCK_BYTES", 4096)
    monkeypatch.setattr(readers, "_HEAD_BYTES", 1024)


def _big_text(n: int, header: bool = True) -> list[str]:
    lines = ["userId,movieId,rating,timestamp\n"] if header else []
    lines += [f"{u // 7 + 1},{u % 7 * 3 + 1},{1 + u % 5}.5,{1000 + u}\n" for u in range(n)]
    return lines


@pytest.mark.parametrize("bad,fragment", [
    ("17,2,four,1\n", "non-numeric rating 'four'"), ("17,2\n", "too few fields"),
    ("17,2,3,4,5\n", "too many fields"), ("-17,2,3,4\n", "negative user id -17"),
    ("17,2,,4\n", "rating is nan or missing"), ("17,2,inf,4\n", "rating is infinite")])
def test_bad_row_in_the_middle_of_a_multi_block_file(tmp_path, small_blocks, bad, fragment):
    lines = _big_text(6000)
    lines[3001:3001] = ["\n", "\n"]  # blank lines in an earlier block shift the numbering
    lines.insert(4500, bad)
    _expect(_write(tmp_path, "big.csv", "".join(lines)), 4501, fragment)


def test_many_blocks_read_like_one(tmp_path, small_blocks, monkeypatch):
    from tfmf.data import readers

    lines = _big_text(6000)
    lines[2000:2000] = ["\r\n", "\n"]
    lines.insert(5000, "700,4,3.0,7\n")  # a duplicate pair in a later block than its twin
    p = _write(tmp_path, "big.csv", "".join(lines))
    err = _expect(p, 5001, "duplicate (user, item) pair")
    assert "first seen at line 4898" in str(err)  # row 4894: +1 header, +2 blank, 1-based
    many = read_table(p, duplicates="last")
    monkeypatch.setattr(readers, "BLOCK_BYTES", 1 << 30)
    one = read_table(p, duplicates="last")
    for a in ("users", "items", "values", "timestamps", "user_ids", "item_ids"):
        np.testing.assert_array_equal(getattr(many, a), getattr(one, a), err_msg=a)
    # the same through pandas alone (every block on the slow path)
    monkeypatch.setattr(readers, "_parse_block_fast", lambda *a, **k: None)
    slow = read_table(p, duplicates="last")
    for a in ("users", "items", "values", "timestamps", "user_ids", "item_ids"):
        np.testing.assert_array_equal(getattr(many, a), getattr(slow, a), err_msg=a)


def test_string_ids_in_a_later_block_make_every_id_a_string(tmp_path, small_blocks):
    lines = _big_text(3000, header=False)
    lines.append("alice,1,3,5\n")
    d = read_table(_write(tmp_path, "mixed.csv", "".join(lines)))
    assert d.user_ids.dtype.kind == "U" and "alice" in d.user_ids and "1" in d.user_ids
    assert d.n_users == 3000 // 7 + 2
