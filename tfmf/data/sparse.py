"""CSR <-> tf.SparseTensor without densifying."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def csr_to_sparse_tensor(m: sp.csr_matrix, dtype=None):
    """A tf.SparseTensor with the same shape and entries as ``m`` (canonical order).

    Args:
      m: scipy CSR matrix with sorted indices.
      dtype: value dtype (default float32).

    Returns:
      tf.SparseTensor of dense_shape ``m.shape``.
    """
    import tensorflow as tf

    m = sp.csr_matrix(m)
    m.sort_indices()
    rows = np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr))
    idx = np.stack([rows, m.indices.astype(np.int64)], axis=1)
    return tf.SparseTensor(idx, m.data.astype(dtype or np.float32), dense_shape=m.shape)


def csr_rows_coo(m: sp.csr_matrix, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """COO parts (row-in-batch, col, value) for a batch of CSR rows, in canonical order."""
    indptr = m.indptr
    starts, ends = indptr[rows], indptr[rows + 1]
    lengths = ends - starts
    batch_rows = np.repeat(np.arange(len(rows), dtype=np.int64), lengths)
    # Gather the column/value spans of each selected row in one vectorized pass.
    offsets = np.repeat(starts - np.cumsum(np.append(0, lengths[:-1])), lengths)
    pos = np.arange(lengths.sum(), dtype=np.int64) + offsets
    return batch_rows, m.indices[pos].astype(np.int64), m.data[pos]
