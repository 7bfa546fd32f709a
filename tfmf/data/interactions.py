"""The interaction container every model reads: contiguous indices plus raw-id mappings.

Indices are assigned by sorting the raw ids (``np.unique``), so the same input always gives the
same indices, and lookups from raw id to index are a vectorized ``searchsorted``.
Splits (:mod:`tfmf.data.splits`) keep the parent's id space: a train and a test subset share
``n_users``/``n_items``, so a model fit on one can score the other.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np
import scipy.sparse as sp

from tfmf.errors import DataError

DUPLICATE_POLICIES = ("error", "last", "mean")


@dataclass
class InteractionData:
    """User-item interactions with contiguous int32 indices.

    Attributes:
      users: int32 [nnz] user indices in ``[0, n_users)``.
      items: int32 [nnz] item indices in ``[0, n_items)``.
      values: float32 [nnz] ratings (explicit) or weights/1.0 (implicit).
      timestamps: int64 [nnz] or None.
      user_ids: raw user ids, position = index (sorted ascending).
      item_ids: raw item ids, position = index (sorted ascending).
      rating_scale: (min, max) of the declared rating scale, or None (implicit data).
      implicit: True when values are binary/confidence rather than ratings.
      item_titles: optional str array aligned with item indices (for display).
      name: dataset name, for reports.
      partition: ``(rank, size)`` when this holds only the rows of rank ``rank`` of ``size``
        (read per rank from shards, :func:`tfmf.data.shards.read_shards`); indices and id maps
        stay global. Subsets, splits and binarizing keep it. None: the whole dataset.
    """

    users: np.ndarray
    items: np.ndarray
    values: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    timestamps: np.ndarray | None = None
    rating_scale: tuple[float, float] | None = None
    implicit: bool = False
    item_titles: np.ndarray | None = None
    name: str = ""
    partition: tuple[int, int] | None = None
    _user_lookup: dict | None = field(default=None, repr=False, compare=False)
    _item_lookup: dict | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.users = np.ascontiguousarray(self.users, dtype=np.int32)
        self.items = np.ascontiguousarray(self.items, dtype=np.int32)
        self.values = np.ascontiguousarray(self.values, dtype=np.float32)
        if self.timestamps is not None:
            self.timestamps = np.ascontiguousarray(self.timestamps, dtype=np.int64)
        if not (len(self.users) == len(self.items) == len(self.values)):
            raise ValueError("users, items and values must have the same length")
        if self.timestamps is not None and len(self.timestamps) != len(self.users):
            raise ValueError("timestamps must have the same length as users")
        if self.rating_scale is not None:
            self.rating_scale = (float(self.rating_scale[0]), float(self.rating_scale[1]))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_raw(
        cls,
        raw_users: Sequence[Any] | np.ndarray,
        raw_items: Sequence[Any] | np.ndarray,
        values: Sequence[float] | np.ndarray | None = None,
        timestamps: Sequence[int] | np.ndarray | None = None,
        *,
        rating_scale: tuple[float, float] | None = None,
        implicit: bool | None = None,
        duplicates: str = "error",
        item_titles: dict | None = None,
        name: str = "",
        source: str | None = None,
        line_numbers: np.ndarray | Callable[[int], int] | None = None,
    ) -> "InteractionData":
        """Builds the container from raw ids, assigning sorted contiguous indices.

        Args:
          raw_users, raw_items: raw ids (ints or strings), one per interaction.
          values: ratings; None means implicit data (all 1.0).
          timestamps: optional int64 timestamps.
          rating_scale: declared (min, max); values outside it are an error.
          implicit: override; defaults to ``values is None``.
          duplicates: policy for repeated (user, item) pairs: "error", "last" or "mean".
          item_titles: optional mapping raw item id -> title.
          name: dataset name.
          source: file the rows came from, used in error messages.
          line_numbers: 1-based file line of each row (an array, or a function row ->
            line), used in error messages.

        Returns:
          An InteractionData.

        Raises:
          DataError: empty input, NaN/inf or out-of-scale values, duplicates under "error".
        """
        if duplicates not in DUPLICATE_POLICIES:
            raise ValueError(f"duplicates must be one of {DUPLICATE_POLICIES}, got {duplicates!r}")
        raw_users = np.asarray(raw_users)
        raw_items = np.asarray(raw_items)
        n = len(raw_users)
        if len(raw_items) != n or (values is not None and len(values) != n):
            raise ValueError("raw_users, raw_items and values must have the same length")
        if n == 0:
            raise DataError("no interactions (empty input)", source)

        def where(i: int) -> int | None:
            return _line(line_numbers, i)

        if values is None:
            vals = np.ones(n, dtype=np.float32)
            implicit = True if implicit is None else implicit
        else:
            vals = np.asarray(values, dtype=np.float64)
            implicit = False if implicit is None else implicit
            bad = np.flatnonzero(~np.isfinite(vals))
            if len(bad):
                i = int(bad[0])
                raise DataError(f"rating is {vals[i]} (NaN/inf); {len(bad)} such row(s)", source, where(i))
            if rating_scale is not None:
                lo, hi = rating_scale
                bad = np.flatnonzero((vals < lo) | (vals > hi))
                if len(bad):
                    i = int(bad[0])
                    raise DataError(
                        f"rating {vals[i]:g} outside the declared scale [{lo:g}, {hi:g}]; "
                        f"{len(bad)} such row(s)", source, where(i))
            vals = vals.astype(np.float32)

        user_ids, users = encode_ids(raw_users)
        item_ids, items = encode_ids(raw_items)
        del raw_users, raw_items
        ts = None if timestamps is None else np.asarray(timestamps, dtype=np.int64)
        return cls.from_indices(users, items, vals, user_ids, item_ids, ts,
                                rating_scale=rating_scale, implicit=bool(implicit),
                                duplicates=duplicates, item_titles=item_titles, name=name,
                                source=source, line_numbers=line_numbers)

    @classmethod
    def from_indices(
        cls,
        users: np.ndarray,
        items: np.ndarray,
        values: np.ndarray,
        user_ids: np.ndarray,
        item_ids: np.ndarray,
        timestamps: np.ndarray | None = None,
        *,
        rating_scale: tuple[float, float] | None = None,
        implicit: bool = False,
        duplicates: str = "error",
        item_titles: dict | None = None,
        name: str = "",
        source: str | None = None,
        line_numbers: np.ndarray | Callable[[int], int] | None = None,
    ) -> "InteractionData":
        """Builds the container from already-encoded indices, resolving duplicate pairs.

        The duplicate check costs one O(nnz) pass when rows are sorted by (user, item) (as
        most ratings files are) and one ``np.sort`` of the int64 pair keys otherwise; the
        stable argsort that locates and resolves duplicates runs only when there are some.

        Args:
          users, items: int32 indices into ``user_ids`` / ``item_ids``.
          values: float32 values (validated by the caller).
          user_ids, item_ids: sorted raw ids.
          timestamps: optional int64 timestamps.
          rating_scale, implicit, duplicates, item_titles, name: as in :meth:`from_raw`.
          source: file the rows came from, used in error messages.
          line_numbers: 1-based file line of each row (an array, or a function row -> line).

        Returns:
          An InteractionData.

        Raises:
          DataError: duplicates under "error"; more than 2**31-1 users or items.
        """
        if duplicates not in DUPLICATE_POLICIES:
            raise ValueError(f"duplicates must be one of {DUPLICATE_POLICIES}, got {duplicates!r}")
        if len(user_ids) > np.iinfo(np.int32).max or len(item_ids) > np.iinfo(np.int32).max:
            raise DataError("more than 2**31-1 distinct users or items", source)
        if _has_duplicate_pairs(users, items, len(item_ids)):
            users, items, values, timestamps, _ = _resolve_duplicates(
                users.astype(np.int64), items.astype(np.int64), values, timestamps,
                len(item_ids), duplicates, source, line_numbers)
        titles = None
        if item_titles:
            titles = np.array([str(item_titles.get(_py(r), "")) for r in item_ids])
        return cls(users=users, items=items, values=values, timestamps=timestamps,
                   user_ids=user_ids, item_ids=item_ids, rating_scale=rating_scale,
                   implicit=bool(implicit), item_titles=titles, name=name)

    # ------------------------------------------------------------------ sizes
    @property
    def n_users(self) -> int:
        return int(len(self.user_ids))

    @property
    def n_items(self) -> int:
        return int(len(self.item_ids))

    @property
    def nnz(self) -> int:
        return int(len(self.values))

    def __len__(self) -> int:
        return self.nnz

    @property
    def density(self) -> float:
        return self.nnz / max(1, self.n_users * self.n_items)

    def summary(self) -> dict:
        """Counts for `tfmf data inspect`: ratings, users, items, density, rating scale."""
        # Presence flags, not bincount: bincount would first copy the int32 indices to int64.
        seen_users = np.zeros(self.n_users, bool)
        seen_users[self.users] = True
        seen_items = np.zeros(self.n_items, bool)
        seen_items[self.items] = True
        active_users = int(np.count_nonzero(seen_users))
        active_items = int(np.count_nonzero(seen_items))
        out = {
            "name": self.name,
            "ratings": self.nnz,
            "users": self.n_users,
            "items": self.n_items,
            "active_users": active_users,
            "active_items": active_items,
            "density": self.density,
            "implicit": self.implicit,
            "rating_scale": list(self.rating_scale) if self.rating_scale else None,
        }
        if self.nnz:
            out["rating_min"] = float(self.values.min())
            out["rating_max"] = float(self.values.max())
            out["rating_mean"] = float(self.values.mean())
        if self.timestamps is not None and self.nnz:
            out["timestamp_min"] = int(self.timestamps.min())
            out["timestamp_max"] = int(self.timestamps.max())
        return out

    # ------------------------------------------------------------------ id mapping
    def clip_range(self) -> tuple[float, float] | None:
        """The range predictions are clipped to: the declared ``rating_scale``, else the
        observed (min, max) of the values, None without interactions."""
        if self.rating_scale is not None:
            return self.rating_scale
        if self.nnz == 0:
            return None
        return float(self.values.min()), float(self.values.max())

    def user_index(self, raw: Sequence[Any] | np.ndarray) -> np.ndarray:
        """Raw user ids -> int32 indices. Raises KeyError naming the first unknown id."""
        return _lookup(self.user_ids, raw, "user")

    def item_index(self, raw: Sequence[Any] | np.ndarray) -> np.ndarray:
        """Raw item ids -> int32 indices. Raises KeyError naming the first unknown id."""
        return _lookup(self.item_ids, raw, "item")

    # ------------------------------------------------------------------ views
    def subset(self, selector: np.ndarray) -> "InteractionData":
        """Rows selected by a boolean mask or index array, in the same id space."""
        sel = np.asarray(selector)
        return replace(
            self,
            users=self.users[sel], items=self.items[sel], values=self.values[sel],
            timestamps=None if self.timestamps is None else self.timestamps[sel],
            _user_lookup=None, _item_lookup=None,
        )

    def binarize(self, threshold: float | None) -> "InteractionData":
        """Keeps interactions with value >= threshold as implicit 1.0 (None keeps all)."""
        keep = np.ones(self.nnz, bool) if threshold is None else self.values >= threshold
        if keep.all():
            # Nothing dropped (e.g. filtered while reading shards): share the index arrays.
            del keep
            return replace(self, values=np.ones(self.nnz, np.float32), implicit=True,
                           rating_scale=None, _user_lookup=None, _item_lookup=None)
        out = self.subset(keep)
        out.values = np.ones(out.nnz, np.float32)
        out.implicit = True
        out.rating_scale = None
        return out

    def compact(self, min_user_interactions: int = 0, min_item_interactions: int = 0
                ) -> "InteractionData":
        """Drops users/items below the thresholds and re-indexes the rest contiguously.

        Sorted order of raw ids is preserved, so lookups stay valid.
        """
        keep = np.ones(self.nnz, bool)
        if min_user_interactions > 0:
            counts = np.bincount(self.users, minlength=self.n_users)
            keep &= counts[self.users] >= min_user_interactions
        if min_item_interactions > 0:
            counts = np.bincount(self.items[keep], minlength=self.n_items)
            keep &= counts[self.items] >= min_item_interactions
        # Sorted distinct indices from counts (no sort over all rows).
        users_used = np.flatnonzero(np.bincount(self.users[keep], minlength=self.n_users))
        items_used = np.flatnonzero(np.bincount(self.items[keep], minlength=self.n_items))
        umap = np.full(self.n_users, -1, np.int32)
        umap[users_used] = np.arange(len(users_used))
        imap = np.full(self.n_items, -1, np.int32)
        imap[items_used] = np.arange(len(items_used))
        return replace(
            self,
            users=umap[self.users[keep]], items=imap[self.items[keep]], values=self.values[keep],
            timestamps=None if self.timestamps is None else self.timestamps[keep],
            user_ids=self.user_ids[users_used], item_ids=self.item_ids[items_used],
            item_titles=None if self.item_titles is None else self.item_titles[items_used],
            _user_lookup=None, _item_lookup=None,
        )

    def to_csr(self, dtype=np.float32) -> sp.csr_matrix:
        """scipy CSR [n_users, n_items]; duplicates never occur (resolved at construction)."""
        m = sp.csr_matrix((self.values.astype(dtype), (self.users, self.items)),
                          shape=(self.n_users, self.n_items))
        m.sort_indices()
        return m

    def to_sparse_tensor(self):
        """tf.SparseTensor [n_users, n_items] in canonical (row-major) order."""
        from tfmf.data.sparse import csr_to_sparse_tensor

        return csr_to_sparse_tensor(self.to_csr())

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> None:
        """Writes a single .npz (atomically: temp file + rename)."""
        path = os.fspath(path)
        arrays = {
            "users": self.users, "items": self.items, "values": self.values,
            "user_ids": self.user_ids, "item_ids": self.item_ids,
        }
        if self.timestamps is not None:
            arrays["timestamps"] = self.timestamps
        if self.item_titles is not None:
            arrays["item_titles"] = self.item_titles
        meta = {"rating_scale": self.rating_scale, "implicit": self.implicit, "name": self.name}
        arrays["meta"] = np.array(json.dumps(meta))
        from tfmf.fileio import atomic_write

        atomic_write(path, lambda tmp: np.savez_compressed(tmp, **arrays))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "InteractionData":
        with np.load(os.fspath(path), allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            scale = tuple(meta["rating_scale"]) if meta["rating_scale"] else None
            return cls(
                users=z["users"], items=z["items"], values=z["values"],
                user_ids=z["user_ids"], item_ids=z["item_ids"],
                timestamps=z["timestamps"] if "timestamps" in z else None,
                item_titles=z["item_titles"] if "item_titles" in z else None,
                rating_scale=scale, implicit=meta["implicit"], name=meta["name"],
            )

    def id_maps(self) -> dict:
        """Just the raw-id mappings (what an exported model needs)."""
        return {"user_ids": self.user_ids, "item_ids": self.item_ids,
                "item_titles": self.item_titles}


# ---------------------------------------------------------------------- helpers
#: Integer ids spanning at most this many values (or 2 x their count) are encoded with a
#: lookup table over [min, max]; wider ranges go through a hash (pandas) and a searchsorted.
_LUT_SPAN = 1 << 24


def encode_ids(raw: np.ndarray | Sequence[Any] | list[np.ndarray]
               ) -> tuple[np.ndarray, np.ndarray]:
    """Raw ids -> (sorted distinct ids, int32 index of each raw id), like ``np.unique``.

    Integer ids are encoded without a sort over all rows: a presence table over their range
    (dense ids such as MovieLens') or a hash of the distinct values (pandas) then a
    ``searchsorted`` over the few distinct ones. Other ids (strings) use ``np.unique``.

    Args:
      raw: 1-D ids, or a list of 1-D integer arrays (blocks of one column, encoded into one
        int32 output without concatenating the raw ids).

    Returns:
      (ids, codes): ``ids[codes] == raw`` (the blocks concatenated).
    """
    parts = list(raw) if isinstance(raw, list) and raw and isinstance(raw[0], np.ndarray) \
        else [np.asarray(raw)]
    n = sum(p.size for p in parts)
    if n == 0 or any(p.dtype.kind not in "iu" for p in parts):
        whole = parts[0] if len(parts) == 1 else np.concatenate(parts)
        ids, codes = np.unique(whole, return_inverse=True)
        return ids, codes.reshape(-1).astype(np.int32)
    dtype = np.result_type(*[p.dtype for p in parts])
    if dtype.kind == "i":
        dtype = np.dtype(np.int64)  # raw integer ids are int64 whatever width they arrive in
    lo = min(int(p.min()) for p in parts if p.size)
    hi = max(int(p.max()) for p in parts if p.size)
    base = lo if lo < 0 or lo > hi - lo else 0  # ids from ~0 (the usual) index the table as-is
    span = hi - base + 1
    codes = np.empty(n, np.int32)
    if span <= max(_LUT_SPAN, 2 * n):
        present = np.zeros(span, bool)
        for p in parts:
            present[p - base if base else p] = True
        ids = (np.flatnonzero(present) + base).astype(dtype)
        lut = np.cumsum(present, dtype=np.int32)
        lut -= 1
        del present
        off = 0
        for p in parts:
            codes[off:off + p.size] = lut[p - base if base else p]
            off += p.size
        return ids, codes
    import pandas as pd

    ids = np.sort(pd.unique(np.concatenate([pd.unique(p) for p in parts])))
    off = 0
    for p in parts:
        codes[off:off + p.size] = np.searchsorted(ids, p)
        off += p.size
    return ids, codes


def _has_duplicate_pairs(users: np.ndarray, items: np.ndarray, n_items: int) -> bool:
    """Whether some (user, item) pair repeats: a sortedness pass, else one sort of the keys."""
    n = len(users)
    if n < 2:
        return False
    step, prev, ordered = 1 << 20, np.int64(-1), True
    for lo in range(0, n, step):  # strictly increasing keys, checked chunk by chunk
        key = users[lo:lo + step].astype(np.int64)
        key *= n_items
        key += items[lo:lo + step]
        if key[0] <= prev or not bool(np.all(key[1:] > key[:-1])):
            ordered = False
            break
        prev = key[-1]
    if ordered:
        return False
    key = users.astype(np.int64)
    key *= n_items
    key += items
    key.sort()
    return bool(np.any(key[1:] == key[:-1]))


def _line(line_numbers, i: int) -> int | None:
    if line_numbers is None:
        return None
    return int(line_numbers(i)) if callable(line_numbers) else int(line_numbers[i])


def _py(x: Any) -> Any:
    return x.item() if hasattr(x, "item") else x


def _lookup(sorted_ids: np.ndarray, raw, kind: str) -> np.ndarray:
    raw = np.asarray(raw)
    if raw.size == 0:
        return np.zeros(raw.shape, np.int32)
    try:
        raw_cast = raw.astype(sorted_ids.dtype) if sorted_ids.dtype.kind in "iu" and raw.dtype.kind in "iuf" else raw
        pos = np.searchsorted(sorted_ids, raw_cast)
    except TypeError:
        # Mixed kinds (e.g. str ids queried with ints): compare as strings.
        pos = np.searchsorted(sorted_ids.astype(str), raw.astype(str))
        raw_cast = raw.astype(str)
        sorted_ids = sorted_ids.astype(str)
    pos = np.clip(pos, 0, len(sorted_ids) - 1)
    ok = sorted_ids[pos] == raw_cast
    if raw.dtype.kind == "f" and raw_cast.dtype.kind in "iu":
        ok &= raw_cast == raw  # the int cast must be exact: 1.5 is not id 1
    if not np.all(ok):
        bad = raw.reshape(-1)[np.flatnonzero(~np.asarray(ok).reshape(-1))[0]]
        raise KeyError(f"unknown {kind} id {_py(bad)!r}")
    return pos.astype(np.int32)


def _resolve_duplicates(users, items, vals, ts, n_items, policy, source, line_numbers):
    key = users * np.int64(n_items) + items
    order = np.argsort(key, kind="stable")
    sk = key[order]
    dup_mask = np.empty(len(sk), bool)
    dup_mask[0] = False
    np.not_equal(sk[1:], sk[:-1], out=dup_mask[1:])
    is_first = dup_mask
    is_first[0] = True
    if is_first.all():
        return users, items, vals, ts, None
    if policy == "error":
        j = int(np.flatnonzero(~is_first)[0])
        i = int(order[j])
        n_dup = int((~is_first).sum())
        line = _line(line_numbers, i)
        first_line = _line(line_numbers, int(order[j - 1]))
        extra = f" (first seen at line {first_line})" if first_line is not None else ""
        raise DataError(
            f"duplicate (user, item) pair{extra}; {n_dup} duplicate row(s). "
            "Set data.duplicates to 'last' or 'mean' to accept them", source, line)
    group = np.cumsum(is_first) - 1
    starts = np.flatnonzero(is_first)
    if policy == "last":
        ends = np.append(starts[1:], len(sk)) - 1
        pick = order[ends]  # stable sort: last in a group is the last occurrence in the file
        return (users[pick], items[pick], vals[pick], None if ts is None else ts[pick], pick)
    # mean: average values, keep the latest timestamp
    sums = np.bincount(group, weights=vals[order].astype(np.float64))
    counts = np.bincount(group)
    pick = order[starts]
    new_ts = None
    if ts is not None:
        new_ts = np.full(len(starts), np.iinfo(np.int64).min, np.int64)
        np.maximum.at(new_ts, group, ts[order])
    return users[pick], items[pick], (sums / counts).astype(np.float32), new_ts, pick
