"""Row-block ownership and the collectives of distributed ALS / iALS (Horovod, Gloo or MPI).

Rank ``r`` of ``s`` owns one contiguous block of users and one of items, cut so the blocks
hold about the same number of observed entries (plus one per row, so empty rows spread too).
After solving its rows a rank *allgathers* them: Horovod concatenates along axis 0 in rank
order, which is row order because the blocks are contiguous and ordered by rank, so every
rank holds the full factor table again. The iALS Gramian ``Y^T Y = sum_r Y_r^T Y_r`` is an
*allreduce* of the ranks' block Gramians ([d, d] each). Traffic per sweep: the two factor
tables once (``(n_users + n_items) * d`` floats) plus two d x d matrices and four loss sums.

Rows read per rank (shards, ``InteractionData.partition``): a rank holds only its own users'
rows. Its user block is then its shards' user range (:meth:`Group.local_user_range`), and the
item blocks' columns are gathered with one *alltoall* (:meth:`Group.exchange_columns`): every
rank sends each peer the entries of the peer's items, so a rank ends holding its users' rows
and its items' columns -- about ``2 / size`` of the training entries -- and never the whole
matrix. The solves, collectives and results are the same as with the full matrix.

A rank that dies makes its peers' next collective fail (Gloo: connection closed, or
``HOROVOD_GLOO_TIMEOUT_SECONDS``), and horovodrun ends the job non-zero.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfmf import distributed


class Group:
    """The ranks taking part (``size == 1``: one process, collectives are identities).

    Attributes:
      rank: this process's rank.
      size: number of ranks.
    """

    def __init__(self, rank: int, size: int):
        self.rank, self.size = rank, size

    @classmethod
    def current(cls) -> "Group":
        """All Horovod ranks when running distributed (horovodrun), else one process."""
        if distributed.is_distributed():
            return cls(distributed.rank(), distributed.size())
        return cls(0, 1)

    @classmethod
    def make(cls, enabled: bool) -> "Group":
        """:meth:`current` when ``enabled``, else one process (each rank solves everything)."""
        return cls.current() if enabled else cls(0, 1)

    def ranges(self, indptr: np.ndarray) -> list[tuple[int, int]]:
        """Contiguous ``[start, stop)`` row ranges per rank, balanced on entries + rows.

        Args:
          indptr: int [n + 1] cumulative entry counts of the rows (a CSR indptr).
        """
        indptr = np.asarray(indptr, np.int64)
        n = len(indptr) - 1
        weight = indptr + np.arange(n + 1)  # entries plus one per row
        cuts = np.searchsorted(weight, weight[-1] * np.arange(self.size + 1) / self.size,
                               side="left")
        cuts[0], cuts[-1] = 0, n
        cuts = np.maximum.accumulate(np.clip(cuts, 0, n))
        return [(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:])]

    def own_range(self, indptr: np.ndarray) -> tuple[int, int]:
        """This rank's ``[start, stop)`` of :meth:`ranges`."""
        return self.ranges(indptr)[self.rank]

    def local_user_range(self, indptr: np.ndarray) -> tuple[int, int]:
        """This rank's user block when it holds only its own users' rows (read per rank).

        Ranks hold disjoint, rank-ordered user ranges (:func:`tfmf.data.shards.
        shards_for_rank`); block ``r`` runs from rank ``r``'s first user with rows to rank
        ``r + 1``'s (rank 0 from 0, the last rank to ``n``), so the blocks are contiguous,
        cover every row, and allgathered solutions come back in row order. One allgather.
        """
        indptr = np.asarray(indptr, np.int64)
        n = len(indptr) - 1
        rows = np.flatnonzero(np.diff(indptr))
        first = int(rows[0]) if len(rows) else n
        if self.size == 1:
            return 0, n
        firsts = self.allgather_rows(tf.constant([first], tf.int64), "als_local_first").numpy()
        # An empty rank starts where the next non-empty one does.
        firsts = np.minimum.accumulate(np.append(firsts, n)[::-1])[::-1]
        firsts[0] = 0
        if np.any(np.diff(firsts) < 0):  # pragma: no cover - shards are rank-ordered
            raise ValueError("ranks' user rows are not in rank order")
        return int(firsts[self.rank]), int(firsts[self.rank + 1])

    def exchange_columns(self, m, item_ranges: list[tuple[int, int]]):
        """This rank's items' columns (as rows: CSR [own items, n_users]) from every rank.

        Args:
          m: CSR [n_users, n_items] holding this rank's users' rows (other rows empty).
          item_ranges: every rank's ``[start, stop)`` item block (:meth:`ranges`).

        One alltoall per array (users, items, values): rank ``q`` receives the entries whose
        item is in its block, from every rank.
        """
        import scipy.sparse as sp

        i0, i1 = item_ranges[self.rank]
        if self.size == 1:
            return sp.csr_matrix(m[:, i0:i1].T, dtype=np.float32)
        import horovod.tensorflow as hvd

        # One array at a time, sent in owner order through boolean masks (no int64 argsort,
        # no COO copy of everything): the peak is this rank's rows plus about two arrays.
        n_users = m.shape[0]
        own = [((m.indices >= a) & (m.indices < b)) for a, b in item_ranges]
        splits = tf.constant([int(k.sum()) for k in own], tf.int32)
        row_of = np.repeat(np.arange(n_users, dtype=np.int32), np.diff(m.indptr))
        got = []
        for k, arr in enumerate((row_of, m.indices, m.data)):
            send = tf.constant(np.concatenate([arr[mask] for mask in own]))
            got.append(hvd.alltoall(send, splits=splits, name=f"als_cols_{k}")[0].numpy())
            del send
            if k == 0:
                del row_of
        del own
        # Rank q's entries arrive in rank order, each rank's in its CSR order, and ranks own
        # ascending user blocks: they are sorted by (user, item), i.e. already the CSR of
        # [n_users, own items]. Its transpose-conversion is the one copy made (no COO sort,
        # and the user column is dropped before it).
        rows, cols, vals = got
        del got
        indptr = np.zeros(n_users + 1, np.int64)
        np.cumsum(np.bincount(rows, minlength=n_users), out=indptr[1:])
        del rows
        cols = cols.astype(np.int32, copy=False)
        if cols.flags.writeable:
            cols -= np.int32(i0)
        else:
            cols = cols - np.int32(i0)
        by_user = sp.csr_matrix((vals.astype(np.float32, copy=False), cols, indptr),
                                shape=(n_users, i1 - i0), copy=False)
        del cols, vals, indptr
        out = by_user.T.tocsr()  # CSC -> CSR: row-sorted indices
        del by_user
        return out

    def allgather_rows(self, x: tf.Tensor, name: str) -> tf.Tensor:
        """Every rank's rows of ``x`` concatenated in rank order (``x`` in one process)."""
        if self.size == 1:
            return x
        import horovod.tensorflow as hvd

        return hvd.allgather(x, name=name)

    def allreduce_sum(self, x: tf.Tensor, name: str) -> tf.Tensor:
        """Elementwise sum of ``x`` over ranks (``x`` in one process)."""
        if self.size == 1:
            return x
        import horovod.tensorflow as hvd

        return hvd.allreduce(x, op=hvd.Sum, name=name)

    def broadcast(self, x: tf.Tensor, name: str) -> tf.Tensor:
        """Rank 0's ``x`` on every rank (``x`` in one process)."""
        if self.size == 1:
            return x
        import horovod.tensorflow as hvd

        return hvd.broadcast(x, root_rank=0, name=name)
