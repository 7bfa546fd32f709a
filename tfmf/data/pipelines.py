"""tf.data input pipelines: rating triples and sparse user rows, sharded per (rank, size).

A pipeline is built once per fit and serves every epoch; Keras opens a new iterator per epoch.
Batch membership is static: :func:`shard_indices` cuts this rank's positions into batches
(disjoint shards, equal step counts on every rank). Each epoch maps positions to examples
through a seeded permutation, ``tf.random.experimental.index_shuffle(position, (seed, epoch))``,
evaluated per batch inside the graph: no per-epoch rebuild, no host-side shuffle, and the
epoch is read when the iterator opens -- from a counter, or from ``epoch=`` (e.g. the
optimizer's restored step count, so a resumed run replays the same order). Nothing is ever
densified: user rows are gathered from CSR arrays inside the graph.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from tfmf.data.interactions import InteractionData


def steps_per_epoch(n: int, batch_size: int, size: int = 1, local: bool = False) -> int:
    """Batches every rank runs per epoch.

    Args:
      n: examples in the whole dataset; with ``local``, this rank's own examples.
      batch_size: examples per batch (per rank).
      size: number of ranks.
      local: the ranks read disjoint parts (shards read per rank): the step count is
        ``ceil(max_r n_r / batch_size)``, agreed by one collective (every rank must call it).

    Returns:
      ``ceil(ceil(n / size) / batch_size)``, or the local rule above.
    """
    if batch_size < 1 or size < 1:
        raise ValueError("batch_size and size must be >= 1")
    if local:
        from tfmf import distributed

        return max(1, math.ceil(distributed.max_over_ranks(n, "tfmf_local_rows") / batch_size))
    return math.ceil(math.ceil(n / size) / batch_size)


def local_batches(n: int, batch_size: int, steps: int) -> list[np.ndarray]:
    """Exactly ``steps`` batches of positions ``0..n-1`` (this rank's own examples).

    For rows read per rank, where ``steps`` is the largest rank's batch count: a rank whose
    rows fill ``steps`` batches of ``batch_size`` is cut like :func:`shard_indices`; a smaller
    rank spreads its rows over ``steps`` batches of equal size (within one), so every rank
    makes the same number of steps and every row is in exactly one batch. A rank with fewer
    rows than steps repeats its rows, one per missing step (degenerate sizes only).
    """
    if n < 1:
        raise ValueError("this rank has no rows to train on: every rank needs at least one "
                         "(use fewer ranks or more shards)")
    pos = np.arange(n, dtype=np.int64)
    if math.ceil(n / batch_size) == steps:
        return np.split(pos, range(batch_size, n, batch_size))
    if n >= steps:
        return np.array_split(pos, steps)
    return [pos[k % n:k % n + 1] for k in range(steps)]


def shard_indices(n: int, batch_size: int, *, rank: int = 0, size: int = 1, seed: int = 0,
                  epoch: int = 0, shuffle: bool = True) -> list[np.ndarray]:
    """This rank's batches of example indices for one epoch.

    The permutation of ``range(n)`` is seeded by ``(seed, epoch)`` and identical on all ranks;
    rank ``r`` takes positions ``r, r + size, ...`` of it, so shards are disjoint and together
    cover all ``n`` examples, and shard sizes differ by at most one.

    Remainder policy: every rank returns exactly ``steps_per_epoch(n, batch_size, size)`` batches
    (Horovod needs equal step counts). A shard is cut into consecutive batches of
    ``batch_size``, the last one smaller. When a shard is one example short of the largest
    shard and that leaves it a batch short, its last batch is split in two (e.g. sizes
    ``[b, b/2, b/2]`` instead of ``[b, b, 1]`` on a longer rank). A rank never gets an empty
    batch: in the degenerate case where it has fewer examples than steps (``n < size``, or
    ``batch_size == 1`` with an uneven remainder) it repeats one of its examples per missing
    step.

    Args:
      n: number of examples.
      batch_size: examples per batch (per rank).
      rank, size: this worker and the number of workers.
      seed, epoch: the shuffle seed; each epoch reshuffles deterministically.
      shuffle: False keeps the natural order (still strided across ranks).

    Returns:
      A list of int64 index arrays, ``steps_per_epoch(n, batch_size, size)`` long.
    """
    if not 0 <= rank < size:
        raise ValueError(f"rank must be in [0, {size}), got {rank}")
    steps = steps_per_epoch(n, batch_size, size)
    order = epoch_order(n, seed, epoch) if shuffle else np.arange(n, dtype=np.int64)
    shard = order[rank::size]
    cuts = list(range(batch_size, len(shard), batch_size))
    if len(cuts) + 1 < steps and len(shard) > 0:
        # One batch short: split the last batch at its midpoint.
        last = cuts[-1] if cuts else 0
        cuts.append(last + (len(shard) - last + 1) // 2)
    batches = [b for b in np.split(shard, cuts) if len(b)] if len(shard) else []
    # Only when this rank has fewer examples than steps: an empty batch would make a mean
    # loss NaN, so the rank re-reads its own examples (or, with an empty shard when n < size,
    # a global one) in one-example batches. Degenerate sizes only; shards stay disjoint otherwise.
    pool = shard if len(shard) else order[rank % n:rank % n + 1] if n else shard
    k = 0
    while len(batches) < steps and len(pool):
        batches.append(pool[k % len(pool):k % len(pool) + 1])
        k += 1
    return batches


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of ``range(n)`` used in ``epoch`` (what the pipelines compute in-graph)."""
    import tensorflow as tf

    if n == 0:
        return np.zeros(0, np.int64)
    return tf.random.experimental.index_shuffle(
        tf.range(n, dtype=tf.int64), seed=tf.constant([seed, epoch], tf.int64),
        max_index=n - 1).numpy()


def _epoch_source(epoch):
    """A zero-argument function giving the epoch as an int64 scalar tensor.

    ``epoch`` may be an int (fixed), a callable (read when each epoch's iterator opens, e.g.
    ``tfmf.training.fit.epoch_of(model, steps)``) or None: a counter of the iterators opened
    so far (0 for the first pass, 1 for the second...).
    """
    import tensorflow as tf

    if callable(epoch):
        return lambda: tf.cast(epoch(), tf.int64)
    if epoch is not None:
        value = int(epoch)
        return lambda: tf.constant(value, tf.int64)
    counter = tf.Variable(-1, dtype=tf.int64, trainable=False)
    return lambda: counter.assign_add(1)


def epoch_batches(n: int, batch_size: int, *, rank: int = 0, size: int = 1, seed: int = 0,
                  epoch=None, shuffle: bool = True, local_steps: int | None = None):
    """A Dataset of this rank's batches of example indices (int64 vectors), one pass per epoch.

    Batch k of epoch e is ``shard_indices(n, batch_size, rank=rank, size=size, seed=seed,
    epoch=e, shuffle=shuffle)[k]``; the cardinality is ``steps_per_epoch(n, batch_size, size)``.

    Args:
      n, batch_size, rank, size, seed, shuffle: as :func:`shard_indices`.
      epoch: int, callable or None (see :func:`_epoch_source`).
      local_steps: the ``n`` examples are this rank's own (read per rank): all of them, in
        exactly this many batches (:func:`local_batches`); ``rank``/``size`` are not used.
    """
    import tensorflow as tf

    if local_steps is not None:
        positions = local_batches(n, batch_size, local_steps)
    else:
        positions = shard_indices(n, batch_size, rank=rank, size=size, shuffle=False)
    steps = len(positions)
    flat = np.concatenate(positions) if positions else np.zeros(0, np.int64)
    splits = np.zeros(steps + 1, np.int64)
    np.cumsum([len(b) for b in positions], out=splits[1:])
    flat_t, bounds = tf.constant(flat, tf.int64), tf.constant(splits)
    seed_t = tf.constant(int(seed), tf.int64)
    current = _epoch_source(epoch)

    def one_epoch(e):
        def take(k):
            pos = flat_t[bounds[k]:bounds[k + 1]]
            if not shuffle:
                return pos
            return tf.random.experimental.index_shuffle(pos, seed=tf.stack([seed_t, e]),
                                                        max_index=max(0, n - 1))

        return tf.data.Dataset.range(steps).map(take, num_parallel_calls=tf.data.AUTOTUNE,
                                                deterministic=True)

    ds = tf.data.Dataset.from_tensors(tf.constant(0, tf.int64)).map(lambda _: current())
    ds = ds.flat_map(one_epoch)
    return ds.apply(tf.data.experimental.assert_cardinality(steps))


def _finish(ds, prefetch: bool):
    import tensorflow as tf

    return ds.prefetch(tf.data.AUTOTUNE) if prefetch else ds


def rating_dataset(data: InteractionData, batch_size: int = 1024, *, seed: int = 0, epoch=None,
                   rank: int = 0, size: int = 1, shuffle: bool = True, prefetch: bool = True):
    """(user, item, rating) batches for this rank, reshuffled every epoch; ready for ``fit``.

    Args:
      data: interactions.
      batch_size: ratings per batch (per rank).
      seed: shuffle seed; epoch e's order is seeded by (seed, e).
      epoch: int, callable or None: which epoch each pass is (see :func:`_epoch_source`).
      rank, size: Horovod rank and world size (see :func:`shard_indices`).
      shuffle: shuffle interactions.
      prefetch: add ``prefetch(AUTOTUNE)``.

    Returns:
      tf.data.Dataset of ``{"user_id": int32[b], "item_id": int32[b], "rating": float32[b]}``
      with ``steps_per_epoch(data.nnz, batch_size, size)`` elements per pass. When ``data``
      holds only this rank's rows (``data.partition``, shards read per rank) every row is
      this rank's: all of them, in ``steps_per_epoch(data.nnz, batch_size, size, local=True)``
      batches (a collective: call it on every rank).
    """
    import tensorflow as tf

    local = None
    if data.partition is not None and size > 1:
        local = steps_per_epoch(data.nnz, batch_size, size, local=True)

    cols = {"user_id": tf.constant(data.users, tf.int32), "item_id": tf.constant(data.items, tf.int32),
            "rating": tf.constant(data.values, tf.float32)}
    ds = epoch_batches(data.nnz, batch_size, rank=rank, size=size, seed=seed, epoch=epoch,
                       shuffle=shuffle, local_steps=local)
    ds = ds.map(lambda idx: {k: tf.gather(t, idx) for k, t in cols.items()},
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _finish(ds, prefetch)



def user_rows(csr: sp.csr_matrix, batch_size: int, *, users: np.ndarray | None = None,
              target: sp.csr_matrix | None = None, seed: int = 0, epoch=None, rank: int = 0,
              size: int = 1, shuffle: bool = True, prefetch: bool = True, local: bool = False):
    """Batches of sparse user rows (autoencoders / fold-in), never densified; every epoch.

    The CSR arrays live in the graph once; each batch gathers its rows' spans with
    ``tf.ragged.range`` and builds a SparseTensor in canonical (row-major) order.

    Args:
      csr: [n_users, n_items] interactions (scipy CSR).
      batch_size: users per batch (per rank).
      users: row indices to iterate (default: all rows).
      target: optional CSR of the same shape; its rows are returned as ``"target"``.
      seed, epoch, rank, size, shuffle, prefetch: as in :func:`rating_dataset`.
      local: ``users`` are this rank's own (rows read per rank): all of them, in
        ``steps_per_epoch(len(users), batch_size, size, local=True)`` batches (a collective).

    Returns:
      tf.data.Dataset of ``{"user_index": int32[b], "items": SparseTensor float32 [b, n_items]}``
      (+ ``"target"``), ``steps_per_epoch(len(users), batch_size, size)`` elements.
    """
    import tensorflow as tf

    mats = {"items": _canonical(csr)}
    if target is not None:
        if target.shape != csr.shape:
            raise ValueError(f"target shape {target.shape} != csr shape {csr.shape}")
        mats["target"] = _canonical(target)
    n_items = csr.shape[1]
    users = np.arange(csr.shape[0], dtype=np.int64) if users is None else np.asarray(users, np.int64)
    users_t = tf.constant(users, tf.int64)
    parts = {k: (tf.constant(m.indptr.astype(np.int64)), tf.constant(m.indices.astype(np.int64)),
                 tf.constant(m.data.astype(np.float32))) for k, m in mats.items()}

    def gather_rows(idx):
        u = tf.gather(users_t, idx)
        out = {"user_index": tf.cast(u, tf.int32)}
        for key, (indptr, indices, values) in parts.items():
            pos = tf.ragged.range(tf.gather(indptr, u), tf.gather(indptr, u + 1))
            flat = pos.flat_values
            coords = tf.stack([pos.value_rowids(), tf.gather(indices, flat)], axis=1)
            shape = tf.stack([tf.size(u, out_type=tf.int64), tf.constant(n_items, tf.int64)])
            out[key] = tf.SparseTensor(coords, tf.gather(values, flat), shape)
        return out

    steps = steps_per_epoch(len(users), batch_size, size, local=True) if local and size > 1 \
        else None
    ds = epoch_batches(len(users), batch_size, rank=rank, size=size, seed=seed, epoch=epoch,
                       shuffle=shuffle, local_steps=steps)
    ds = ds.map(gather_rows, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _finish(ds, prefetch)


def _canonical(m: sp.spmatrix) -> sp.csr_matrix:
    m = sp.csr_matrix(m)
    if not m.has_sorted_indices:
        m = m.sorted_indices()
    return m
