"""Row-block ownership and the collectives of distributed ALS / iALS (Horovod, Gloo or MPI).

Rank ``r`` of ``s`` owns one contiguous block of users and one of items, cut so the blocks
hold about the same number of observed entries (plus one per row, so empty rows spread too).
After solving its rows a rank *allgathers* them: Horovod concatenates along axis 0 in rank
order, which is row order because the blocks are contiguous and ordered by rank, so every
rank holds the full factor table again. The iALS Gramian ``Y^T Y = sum_r Y_r^T Y_r`` is an
*allreduce* of the ranks' block Gramians ([d, d] each). Traffic per sweep: the two factor
tables once (``(n_users + n_items) * d`` floats) plus two d x d matrices and four loss sums.

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
