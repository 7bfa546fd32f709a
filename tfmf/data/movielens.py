"""MovieLens loaders: one spec per release, read offline from a present copy, download on request.

A copy is *present* when ``<data_dir>/<name>/<ratings file>`` exists. ``data_dir`` resolves to
the explicit argument, then ``$TFMF_DATA_DIR``, then ``../shared/data`` beside the project, then
``~/.tfmf/data``. Downloads (``download=True`` only) come from GroupLens (or
``$TFMF_MOVIELENS_URL``), are checksum-verified and extracted atomically (temp dir + rename).
MovieLens files are never copied into the repository.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tfmf.data.interactions import InteractionData
from tfmf.data.readers import read_table
from tfmf.errors import DataError

DEFAULT_URL = "https://files.grouplens.org/datasets/movielens"
URL_ENV = "TFMF_MOVIELENS_URL"
DATA_DIR_ENV = "TFMF_DATA_DIR"
ML100K_FOLDS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")


@dataclass(frozen=True)
class MovieLensSpec:
    """How one release is laid out.

    Attributes:
      ratings: ratings file inside ``<name>/``.
      delimiter: its field separator.
      header: whether it has a header row.
      rating_scale: declared (min, max) stars.
      titles: item-title file; titles_delimiter / titles_encoding describe it.
      md5: published MD5 of ``<name>.zip`` (None: the release changes over time, so the
        ``<name>.zip.md5`` published alongside is used).
    """

    ratings: str
    delimiter: str
    header: bool
    rating_scale: tuple[float, float]
    titles: str
    titles_delimiter: str
    titles_encoding: str
    md5: str | None


_DAT = dict(ratings="ratings.dat", delimiter="::", header=False, titles="movies.dat",
            titles_delimiter="::")
_CSV = dict(ratings="ratings.csv", delimiter=",", header=True, titles="movies.csv",
            titles_delimiter=",", titles_encoding="utf-8", rating_scale=(0.5, 5.0))
SPECS: dict[str, MovieLensSpec] = {
    "ml-100k": MovieLensSpec("u.data", "\t", False, (1.0, 5.0), "u.item", "|", "latin-1",
                             "0e33842e24a9c977be4e0107933c0723"),
    "ml-1m": MovieLensSpec(**_DAT, rating_scale=(1.0, 5.0), titles_encoding="latin-1",
                           md5="c4d9eecfca2ab87c1945afe126590906"),
    "ml-10m": MovieLensSpec(**_DAT, rating_scale=(0.5, 5.0), titles_encoding="utf-8",
                            md5="ce571fd55effeba0271552578f2648bd"),
    "ml-20m": MovieLensSpec(**_CSV, md5="cd245b17a1ae2cc31bb14903e1204af3"),
    "ml-25m": MovieLensSpec(**_CSV, md5="6b51fb2759a8657d3bfcbfc42b592ada"),
    "ml-latest": MovieLensSpec(**_CSV, md5=None),
    "ml-latest-small": MovieLensSpec(**_CSV, md5=None),
}
# ml-10m.zip unpacks to "ml-10M100K/"; the others to "<name>/".
_ARCHIVE_DIRS = {"ml-10m": "ml-10M100K"}


# ---------------------------------------------------------------------------- locating
def candidate_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Data directories in resolution order (explicit, $TFMF_DATA_DIR, ../shared/data, ~/.tfmf)."""
    if data_dir is not None:
        return [Path(data_dir)]
    out = []
    if os.environ.get(DATA_DIR_ENV):
        out.append(Path(os.environ[DATA_DIR_ENV]))
    out.append(Path(__file__).resolve().parents[2].parent / "shared" / "data")
    out.append(Path.home() / ".tfmf" / "data")
    return out


def find_movielens(name: str, data_dir: str | os.PathLike | None = None) -> Path | None:
    """The directory holding a present copy of ``name``, or None."""
    spec = _spec(name)
    for d in candidate_dirs(data_dir):
        if (d / name / spec.ratings).is_file():
            return d / name
    return None


def _spec(name: str) -> MovieLensSpec:
    if name not in SPECS:
        raise DataError(f"unknown MovieLens release {name!r}; known: {sorted(SPECS)}")
    return SPECS[name]


# ---------------------------------------------------------------------------- loading
def load_movielens(name: str, data_dir: str | os.PathLike | None = None,
                   download: bool = False) -> InteractionData:
    """Loads one MovieLens release (ratings, timestamps, item titles).

    Args:
      name: ml-100k, ml-1m, ml-10m, ml-20m, ml-25m, ml-latest or ml-latest-small.
      data_dir: directory holding ``<name>/`` (default resolution: see module docstring).
      download: fetch and verify the archive when no copy is present.

    Returns:
      InteractionData with the release's rating scale and item titles.

    Raises:
      DataError: no copy present (and download disabled or failed), or malformed files.
    """
    spec = _spec(name)
    root = find_movielens(name, data_dir)
    if root is None:
        if not download:
            tried = ", ".join(str(d / name) for d in candidate_dirs(data_dir))
            raise DataError(f"{name} not found (looked in {tried}); pass download=True "
                            f"(data.download: true) or set ${DATA_DIR_ENV}")
        root = download_movielens(name, data_dir)
    return _read_ratings(root / spec.ratings, spec, name, _read_titles(root, spec))


def load_ml100k_fold(fold: str, data_dir: str | os.PathLike | None = None,
                     data: InteractionData | None = None
                     ) -> tuple[InteractionData, InteractionData]:
    """An official ML-100K fold (u1..u5, ua, ub) as (train, test).

    Every fold's base and test files partition u.data, so the fold is a split of ``data``
    (default: u.data as loaded by :func:`load_movielens`): its test part holds the rows whose
    raw (user, item) pair is in ``<fold>.test``, its train part all other rows. Passing the
    loaded (possibly binarized or filtered) data keeps its id space and transforms; only the
    small test file is read. Both parts have ``data``'s ``n_users`` and ``n_items``.

    Raises:
      DataError: unknown fold, missing files, or ``data`` holding none of the fold's pairs
        (not ML-100K).
    """
    if fold not in ML100K_FOLDS:
        raise DataError(f"unknown ML-100K fold {fold!r}; known: {list(ML100K_FOLDS)}")
    full = data if data is not None else load_movielens("ml-100k", data_dir)
    root = find_movielens("ml-100k", data_dir)
    spec = SPECS["ml-100k"]
    test = _read_ratings(root / f"{fold}.test", spec, f"ml-100k/{fold}.test")
    try:
        mask = _pair_mask(full, test.user_ids[test.users], test.item_ids[test.items])
    except (TypeError, ValueError) as exc:
        raise DataError(f"official ML-100K folds need integer MovieLens ids ({exc})") from None
    if test.nnz and not mask.any():
        raise DataError(f"none of the {test.nnz} pairs of ml-100k/{fold}.test is in the data "
                        f"({full.name}): official folds split ML-100K only")
    return full.subset(~mask), full.subset(mask)


def _pair_mask(data: InteractionData, raw_users: np.ndarray, raw_items: np.ndarray
               ) -> np.ndarray:
    """Bool [nnz]: whether each row's raw (user, item) pair is among the given pairs."""
    users = np.asarray(data.user_ids, np.int64)[data.users]
    items = np.asarray(data.item_ids, np.int64)[data.items]
    raw_users, raw_items = np.asarray(raw_users, np.int64), np.asarray(raw_items, np.int64)
    width = int(max(items.max(initial=0), raw_items.max(initial=0))) + 1
    return np.isin(users * width + items, raw_users * width + raw_items)


def _read_ratings(path: Path, spec: MovieLensSpec, name: str,
                  titles: dict | None = None) -> InteractionData:
    if not path.is_file():
        raise DataError("missing MovieLens file", path)
    data = read_table(path, delimiter=spec.delimiter, header=spec.header,
                      columns={"user": 0, "item": 1, "rating": 2, "timestamp": 3},
                      rating_scale=spec.rating_scale, name=name)
    if titles:
        data.item_titles = np.array([titles.get(int(i), "") for i in data.item_ids])
    return data


def _read_titles(root: Path, spec: MovieLensSpec) -> dict[int, str] | None:
    """movie id -> title; None when the titles file is absent (titles are optional)."""
    path = root / spec.titles
    if not path.is_file():
        return None
    if spec.titles_delimiter == ",":  # movies.csv quotes titles that contain commas
        frame = pd.read_csv(path, usecols=[0, 1], encoding=spec.titles_encoding)
        return dict(zip(frame.iloc[:, 0].astype(int), frame.iloc[:, 1].astype(str)))
    text = path.read_bytes().decode(spec.titles_encoding, errors="replace")
    out = {}
    for line in text.splitlines():  # ~10k-60k lines: a plain loop is fast enough
        parts = line.split(spec.titles_delimiter, 2)
        if len(parts) >= 2 and parts[0].strip().isdigit():
            out[int(parts[0])] = parts[1]
    return out


# ---------------------------------------------------------------------------- download
def download_movielens(name: str, data_dir: str | os.PathLike | None = None, *,
                       base_url: str | None = None, timeout: float = 60.0) -> Path:
    """Downloads, verifies and atomically extracts ``<name>.zip``; returns ``<data_dir>/<name>``.

    The MD5 comes from :data:`SPECS` (published GroupLens checksums) or, for releases that
    change over time, from ``<name>.zip.md5`` next to the archive. Extraction goes to a temp
    directory in ``data_dir`` that is renamed into place, so a crash never leaves a half copy.

    Args:
      name: release name.
      data_dir: destination (default: $TFMF_DATA_DIR, else ~/.tfmf/data).
      base_url: mirror (default: $TFMF_MOVIELENS_URL, else files.grouplens.org).
      timeout: network timeout in seconds.

    Raises:
      DataError: no network / HTTP error, checksum mismatch, or a bad archive.
    """
    spec = _spec(name)
    if data_dir is None:
        data_dir = os.environ.get(DATA_DIR_ENV) or Path.home() / ".tfmf" / "data"
    dest_root = Path(data_dir)
    dest_root.mkdir(parents=True, exist_ok=True)
    base = (base_url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
    url = f"{base}/{name}.zip"
    expected = spec.md5 or _fetch(url + ".md5", timeout).decode("ascii", "replace").split()[0]
    with tempfile.TemporaryDirectory(dir=dest_root, prefix=f".{name}-") as tmp:
        archive = Path(tmp) / f"{name}.zip"
        archive.write_bytes(_fetch(url, timeout))
        got = hashlib.md5(archive.read_bytes()).hexdigest()
        if got != expected.lower():
            raise DataError(f"checksum mismatch for {url}: md5 {got}, expected {expected}; "
                            "the download is corrupt or the release changed", archive.name)
        extracted = Path(tmp) / "x"
        try:
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():  # refuse absolute paths / '..' (zip slip)
                    if member.startswith("/") or ".." in Path(member).parts:
                        raise DataError(f"unsafe path {member!r} in archive", url)
                zf.extractall(extracted)
        except zipfile.BadZipFile as e:
            raise DataError(f"bad zip archive: {e}", url) from None
        src = extracted / _ARCHIVE_DIRS.get(name, name)
        if not (src / spec.ratings).is_file():
            raise DataError(f"archive has no {_ARCHIVE_DIRS.get(name, name)}/{spec.ratings}", url)
        dest = dest_root / name
        if not (dest / spec.ratings).is_file():  # another process may have won the race
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(src, dest)
    return dest


def _fetch(url: str, timeout: float) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read()
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise DataError(f"cannot download {url} ({e}); no network? Copy the release into "
                        f"${DATA_DIR_ENV}/<name>/ instead") from None
