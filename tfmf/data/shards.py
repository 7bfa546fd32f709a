"""Sharded storage: a dataset as Parquet shards of whole users, with its id maps and a manifest.

``tfmf data convert SOURCE --out DIR`` (:func:`write_shards`) writes::

    DIR/manifest.json          counts, schema, version, every file with its rows and sha256
    DIR/user_ids.parquet       raw user id of each user index (sorted, as InteractionData)
    DIR/item_ids.parquet       raw item id (and title) of each item index
    DIR/part-00000.parquet ... rows (user, item, rating[, timestamp]) as global int32 indices

Users are cut into ``n_shards`` contiguous index blocks holding about ``nnz / n_shards`` rows
each (a user's rows never straddle shards, so a rank holds whole user histories). Rank ``r`` of
``size`` reads the contiguous shard range ``[r * S // size, (r + 1) * S // size)``: every shard
is read by exactly one rank, ranks get ``floor`` or ``ceil`` of ``S / size`` shards, and the
assignment depends only on ``(S, size)``. The default ``S`` = 12 splits evenly over 1, 2, 3, 4,
6 and 12 ranks. Indices are global: a rank's :class:`InteractionData` has the full
``n_users``/``n_items`` and id maps, so models built on any rank share one id space.

Every file's sha256 is checked when read; a missing, changed or corrupt file is a
:class:`~tfmf.errors.DataError` naming it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os

import numpy as np

from tfmf.data.interactions import InteractionData
from tfmf.errors import DataError
from tfmf.fileio import atomic_directory

FORMAT = "tfmf-shards"
VERSION = 1
MANIFEST = "manifest.json"
DEFAULT_SHARDS = 12


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def user_blocks(data: InteractionData, n_shards: int) -> np.ndarray:
    """Cut points ``[0 = c_0 <= ... <= c_S = n_users]``: shard k holds users ``[c_k, c_k+1)``.

    Cuts fall where the cumulative row count crosses ``k * nnz / S``, so shards hold about
    equal numbers of rows (within one user's rows).
    """
    counts = np.bincount(data.users, minlength=data.n_users)
    cum = np.cumsum(counts)
    targets = np.arange(1, n_shards) * (data.nnz / n_shards)
    cuts = np.searchsorted(cum, targets, side="left") + 1
    return np.concatenate([[0], np.clip(cuts, 0, data.n_users), [data.n_users]]).astype(np.int64)


def write_shards(data: InteractionData, out_dir: str | os.PathLike, n_shards: int = DEFAULT_SHARDS,
                 source: str | None = None) -> dict:
    """Writes ``data`` as Parquet shards + id maps + manifest.json under ``out_dir``.

    The directory is written beside ``out_dir`` and renamed into place at the end, so a crash
    never leaves a half-written dataset that looks complete.

    Args:
      data: interactions (every user/item of its id space is kept in the id maps).
      out_dir: directory to create; must not exist or be empty.
      n_shards: number of shard files (>= 1; at most n_users).
      source: where the data came from, recorded in the manifest.

    Returns:
      The manifest (as written).

    Raises:
      DataError: bad n_shards, or ``out_dir`` exists and is not empty.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir = os.fspath(out_dir)
    if n_shards < 1:
        raise DataError(f"--shards must be >= 1, got {n_shards}", out_dir)
    if data.nnz == 0:
        raise DataError("no interactions to convert", source)
    n_shards = min(n_shards, max(1, int(np.count_nonzero(np.bincount(data.users)))))
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise DataError("output exists and is not an empty directory; choose a new --out",
                        out_dir)
    with atomic_directory(out_dir) as tmp:
        files = {}

        def put(table, name: str) -> dict:
            path = os.path.join(tmp, name)
            pq.write_table(table, path, compression="zstd")
            files[name] = {"file": name, "rows": table.num_rows, "sha256": _sha256(path),
                           "bytes": os.path.getsize(path)}
            return files[name]

        ids = {"id": data.user_ids}
        user_map = put(pa.table(ids), "user_ids.parquet")
        items = {"id": data.item_ids}
        if data.item_titles is not None:
            items["title"] = np.asarray(data.item_titles, dtype=str)
        item_map = put(pa.table(items), "item_ids.parquet")
        cuts = user_blocks(data, n_shards)
        shards = []
        for k in range(n_shards):
            lo, hi = int(cuts[k]), int(cuts[k + 1])
            rows = np.flatnonzero((data.users >= lo) & (data.users < hi))
            cols = {"user": data.users[rows], "item": data.items[rows],
                    "rating": data.values[rows]}
            if data.timestamps is not None:
                cols["timestamp"] = data.timestamps[rows]
            del rows
            entry = put(pa.table(cols), f"part-{k:05d}.parquet")
            shards.append({**entry, "users": [lo, hi]})
        manifest = {
            "format": FORMAT, "version": VERSION, "name": data.name, "source": source,
            "n_users": data.n_users, "n_items": data.n_items, "nnz": data.nnz,
            "implicit": data.implicit,
            "rating_scale": list(data.rating_scale) if data.rating_scale else None,
            "schema": {"user": "int32", "item": "int32", "rating": "float32",
                       **({"timestamp": "int64"} if data.timestamps is not None else {})},
            "user_ids": user_map, "item_ids": item_map, "shards": shards,
            "assignment": "rank r of size reads shards [r*S//size, (r+1)*S//size); shard k "
                          "holds user indices [users[0], users[1])",
        }
        if sum(s["rows"] for s in shards) != data.nnz:  # pragma: no cover - a bug guard
            raise AssertionError("shards do not cover every row")
        with open(os.path.join(tmp, MANIFEST), "w") as fh:
            json.dump(manifest, fh, indent=1)
    return manifest


def _dir_of(path: str) -> str:
    return os.path.dirname(path) if os.path.basename(path) == MANIFEST else path


def read_manifest(path: str | os.PathLike) -> dict:
    """The manifest of a converted dataset (``path``: its directory or manifest.json)."""
    root = _dir_of(os.fspath(path))
    mpath = os.path.join(root, MANIFEST)
    if not os.path.isfile(mpath):
        raise DataError("no manifest.json: not a directory written by `tfmf data convert`", root)
    try:
        with open(mpath) as fh:
            manifest = json.load(fh)
    except (OSError, ValueError) as e:
        raise DataError(f"unreadable or corrupt manifest ({e})", mpath) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"not a {FORMAT} manifest", mpath)
    if manifest.get("version") != VERSION:
        raise DataError(f"manifest version {manifest.get('version')!r}; this tfmf reads "
                        f"version {VERSION} (re-run `tfmf data convert`)", mpath)
    for key in ("n_users", "n_items", "nnz", "shards", "user_ids", "item_ids"):
        if key not in manifest:
            raise DataError(f"manifest lacks {key!r}", mpath)
    return manifest


def shards_for_rank(n_shards: int, rank: int, size: int) -> range:
    """Shard indices rank ``rank`` of ``size`` reads: a contiguous range, disjoint over ranks."""
    if size < 1 or not 0 <= rank < size:
        raise DataError(f"rank {rank} is not in [0, size={size})")
    if size > n_shards:
        raise DataError(f"{n_shards} shard(s) cannot feed {size} ranks: every rank needs at "
                        f"least one; re-run `tfmf data convert --shards {size}` (or a multiple)")
    return range(rank * n_shards // size, (rank + 1) * n_shards // size)


def rank_user_range(path: str | os.PathLike, rank: int, size: int) -> tuple[int, int]:
    """``[lo, hi)`` of the user indices whose rows rank ``rank`` of ``size`` reads.

    Ranks' ranges are contiguous, disjoint, ordered by rank and together cover every user.
    """
    m = read_manifest(path)
    mine = shards_for_rank(len(m["shards"]), rank, size)
    lo = 0 if rank == 0 else int(m["shards"][mine.start]["users"][0])
    hi = int(m["n_users"]) if rank == size - 1 else int(m["shards"][mine.stop - 1]["users"][1])
    return lo, hi


def _read_file(root: str, entry: dict, columns: list[str] | None = None):
    import pyarrow.parquet as pq

    path = os.path.join(root, entry["file"])
    if not os.path.isfile(path):
        raise DataError("shard file missing (listed in manifest.json)", path)
    if _sha256(path) != entry["sha256"]:
        raise DataError("checksum mismatch: the file changed or is corrupt since "
                        "`tfmf data convert` wrote it", path)
    try:
        table = pq.read_table(path, columns=columns)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise DataError(f"cannot read Parquet shard: {e}", path) from None
    if table.num_rows != entry["rows"]:
        raise DataError(f"has {table.num_rows} rows; manifest.json says {entry['rows']}", path)
    return table


def _ids(table) -> np.ndarray:
    ids = table.column("id").to_numpy(zero_copy_only=False)
    return ids.astype(str) if ids.dtype == object else ids


@contextlib.contextmanager
def _malloc_pool():
    """Arrow allocations through malloc while the shards are decoded.

    Arrow's default allocator (mimalloc) keeps freed decode buffers mapped for reuse: after a
    read they sat under every later allocation of the process, a part of a rank's data RSS
    that did not shrink with its rows (docs/profiles/rank_memory.txt). glibc unmaps large
    freed blocks at once, and decoding through it measured faster here, too.
    """
    import pyarrow as pa

    prev = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        yield
    finally:
        pa.set_memory_pool(prev)
        prev.release_unused()


@_malloc_pool()
def read_shards(path: str | os.PathLike, rank: int = 0, size: int = 1, *,
                min_rating: float | None = None, timestamps: bool = True) -> InteractionData:
    """This rank's interactions of a converted dataset, in the global id space.

    Args:
      path: the directory written by ``tfmf data convert`` (or its manifest.json).
      rank, size: this process's rank and the number of ranks (0, 1: every shard).
      min_rating: keep only rows rated >= this, filtered shard by shard as they are read (so
        the rows below it are never held; what ``data.binarize_threshold`` keeps).
      timestamps: read the timestamp column (False: ``timestamps`` is None, 8 bytes a row
        less; only temporal splits need them).

    Returns:
      InteractionData with the full id maps (``n_users``/``n_items`` of the whole dataset) and
      only the rows of this rank's shards (:func:`shards_for_rank`); with ``size > 1`` its
      ``partition`` is ``(rank, size)``, which the input pipelines read as "these rows are this
      rank's own" (:func:`tfmf.data.pipelines.rating_dataset`).

    Raises:
      DataError: naming the manifest or shard file that is missing, changed or corrupt.
    """
    root = _dir_of(os.fspath(path))
    m = read_manifest(root)
    mine = shards_for_rank(len(m["shards"]), rank, size)
    user_ids = _ids(_read_file(root, m["user_ids"]))
    item_table = _read_file(root, m["item_ids"])
    item_ids = _ids(item_table)
    titles = (item_table.column("title").to_numpy(zero_copy_only=False).astype(str)
              if "title" in item_table.column_names else None)
    if len(user_ids) != m["n_users"] or len(item_ids) != m["n_items"]:
        raise DataError("id maps disagree with manifest.json's n_users/n_items",
                        os.path.join(root, MANIFEST))
    has_ts = "timestamp" in m.get("schema", {}) and timestamps
    entries = [m["shards"][k] for k in mine]
    n = int(sum(e["rows"] for e in entries))
    users = np.empty(n, np.int32)
    items = np.empty(n, np.int32)
    values = np.empty(n, np.float32)
    ts = np.empty(n, np.int64) if has_ts else None
    off = 0
    cols = ["user", "item", "rating"] + (["timestamp"] if has_ts else [])
    for e in entries:
        t = _read_file(root, e, columns=cols)
        if min_rating is not None:
            import pyarrow.compute as pc

            t = t.filter(pc.greater_equal(t.column("rating"), float(min_rating)))
        k = t.num_rows
        users[off:off + k] = t.column("user").to_numpy()
        items[off:off + k] = t.column("item").to_numpy()
        values[off:off + k] = t.column("rating").to_numpy()
        if has_ts:
            ts[off:off + k] = t.column("timestamp").to_numpy()
        lo, hi = e["users"]
        if k and (users[off:off + k].min() < lo or users[off:off + k].max() >= hi
                  or items[off:off + k].min() < 0 or items[off:off + k].max() >= len(item_ids)):
            raise DataError("holds indices outside its manifest range",
                            os.path.join(root, e["file"]))
        off += k
        del t
    if off < n:
        # Filtered: views of what was written. The tail of each np.empty buffer was never
        # touched, so its pages were never resident: no copy, no RSS for dropped rows.
        users, items, values = users[:off], items[:off], values[:off]
        ts = None if ts is None else ts[:off]
    scale = tuple(m["rating_scale"]) if m.get("rating_scale") else None
    return InteractionData(users=users, items=items, values=values, user_ids=user_ids,
                           item_ids=item_ids, timestamps=ts, rating_scale=scale,
                           implicit=bool(m.get("implicit")), item_titles=titles,
                           name=m.get("name") or os.path.basename(os.path.abspath(root)),
                           partition=(rank, size) if size > 1 else None)
