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
