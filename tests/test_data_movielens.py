"""MovieLens loaders on the real ML-100K copy (skipped when absent) and a fake download."""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import socket
import threading
import zipfile

import numpy as np
import pytest

from tfmf.data import movielens
from tfmf.data.movielens import download_movielens, load_ml100k_fold, load_movielens
from tfmf.errors import DataError


@pytest.mark.slow
def test_ml100k_counts_and_titles(ml100k_dir):
    d = load_movielens("ml-100k", ml100k_dir)
    assert (d.nnz, d.n_users, d.n_items) == (100_000, 943, 1682)
    assert d.rating_scale == (1.0, 5.0) and d.timestamps is not None
    assert d.item_titles[d.item_index([1])[0]] == "Toy Story (1995)"


@pytest.mark.slow
@pytest.mark.parametrize("fold,n_test", [("u1", 20_000), ("u5", 20_000), ("ua", 9_430)])
def test_ml100k_official_folds_share_id_space(ml100k_dir, fold, n_test):
    train, test = load_ml100k_fold(fold, ml100k_dir)
    assert test.nnz == n_test and train.nnz + test.nnz == 100_000
    for part in (train, test):
        assert (part.n_users, part.n_items) == (943, 1682)
    full = load_movielens("ml-100k", ml100k_dir)
    np.testing.assert_array_equal(train.user_ids, full.user_ids)
    # Each test rating is the same (user, item, rating) as in u.data.
    key = lambda d: d.users.astype(np.int64) * 1682 + d.items
    pos = np.searchsorted(key(full), key(test))
    np.testing.assert_array_equal(full.values[pos], test.values)
    assert not np.isin(key(train), key(test)).any()


def test_missing_copy_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="download=True"):
        load_movielens("ml-1m", tmp_path)
    with pytest.raises(DataError, match="unknown MovieLens"):
        load_movielens("ml-3m", tmp_path)


def _fake_release(tmp_path, name="ml-100k"):
    """A tiny archive laid out like ml-100k.zip; returns (server dir, md5)."""
    srv = tmp_path / "srv"
    srv.mkdir()
    rows = "".join(f"{u}\t{i}\t{1 + (u + i) % 5}\t{880000000 + u * 10 + i}\n"
                   for u in range(1, 6) for i in range(1, 5))
    archive = srv / f"{name}.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(f"{name}/u.data", rows)
        zf.writestr(f"{name}/u.item", "".join(f"{i}|Movie {i} (1990)|01-Jan-1990||x|0\n"
                                              for i in range(1, 5)))
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    return srv, md5


def test_download_file_url_with_pinned_md5(tmp_path, monkeypatch):
    srv, md5 = _fake_release(tmp_path)
    monkeypatch.setitem(movielens.SPECS, "ml-100k",
                        dataclasses.replace(movielens.SPECS["ml-100k"], md5=md5))
    monkeypatch.setenv(movielens.URL_ENV, srv.as_uri())
    data_dir = tmp_path / "data"
    d = load_movielens("ml-100k", data_dir, download=True)
    assert (d.nnz, d.n_users, d.n_items) == (20, 5, 4)
    assert d.item_titles[0] == "Movie 1 (1990)"
    assert sorted(p.name for p in data_dir.iterdir()) == ["ml-100k"]  # temp dir cleaned up
    # Present now: loads offline without downloading again.
    monkeypatch.setenv(movielens.URL_ENV, "http://127.0.0.1:9")
    assert load_movielens("ml-100k", data_dir).nnz == 20


def test_checksum_mismatch_leaves_nothing(tmp_path):
    srv, _ = _fake_release(tmp_path)  # the real ml-100k md5 in SPECS cannot match
    data_dir = tmp_path / "data"
    with pytest.raises(DataError, match="checksum mismatch"):
        download_movielens("ml-100k", data_dir, base_url=srv.as_uri())
    assert list(data_dir.iterdir()) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_download_http_with_md5_file(tmp_path):
    """Releases without a pinned md5 use <name>.zip.md5 published next to the archive."""
    srv, md5 = _fake_release(tmp_path, "ml-latest-small")
    # ml-latest-small's real layout is ratings.csv; the fake only checks md5 + extraction.
    with zipfile.ZipFile(srv / "ml-latest-small.zip", "w") as zf:
        zf.writestr("ml-latest-small/ratings.csv",
                    "userId,movieId,rating,timestamp\n1,1,4.5,5\n1,2,0.5,6\n2,1,3.0,7\n")
        zf.writestr("ml-latest-small/movies.csv",
                    'movieId,title,genres\n1,"Heat, The (1995)",Action\n2,Up (2009),Kids\n')
    md5 = hashlib.md5((srv / "ml-latest-small.zip").read_bytes()).hexdigest()
    (srv / "ml-latest-small.zip.md5").write_text(f"{md5}  ml-latest-small.zip\n")
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(srv))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.RequestHandlerClass.log_message = lambda *a: None
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        download_movielens("ml-latest-small", tmp_path / "data", base_url=base)
        d = load_movielens("ml-latest-small", tmp_path / "data")
        assert d.nnz == 3 and d.rating_scale == (0.5, 5.0)
        assert list(d.item_titles) == ["Heat, The (1995)", "Up (2009)"]
        (srv / "ml-latest-small.zip.md5").write_text("0" * 32 + "\n")
        with pytest.raises(DataError, match="checksum mismatch"):
            download_movielens("ml-latest-small", tmp_path / "data2", base_url=base)
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_no_network_is_a_clear_error(tmp_path):
    base = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    with pytest.raises(DataError, match="cannot download"):
        download_movielens("ml-1m", tmp_path, base_url=base, timeout=5)
