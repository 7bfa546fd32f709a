"""Export a fitted Recommender as a self-contained TensorFlow SavedModel.

The SavedModel loads with plain ``tf.saved_model.load`` (no tfmf, no Keras needed) and maps raw
ids itself (``tf.lookup.StaticHashTable``), so a serving process never sees tfmf's indices.
Signatures:

* ``score(users, items)`` -> ``{"scores": float32 [n]}``: the model's score of each (user, item)
  pair (``Recommender.score``, i.e. unclipped predicted ratings for explicit models).
* ``recommend(users)`` -> ``{"item_ids": [n, k], "scores": float32 [n, k]}`` (+ ``"titles"``
  when the dataset has item titles): top-k unseen items per known user; k is fixed at export
  (capped at the catalogue size). The output is dense [n, k]: a user with fewer than k unseen
  items gets the rest of the row filled with seen items scored ``-inf`` (drop entries whose
  score is ``-inf``), as ``Recommender.recommend`` does.
* ``recommend_from_items(items)`` -> ``{"item_ids": [k], "scores": float32 [k]}`` (+ titles):
  fold-in top-k for one new user given the raw ids of the items they interacted with (those
  items are excluded). Only for models scored from interaction rows (Mult-VAE/DAE, EASE).

Raw ids keep their type: int64 when the dataset's ids are integers, strings otherwise. Unknown
ids fail the call with ``InvalidArgumentError: unknown user id`` / ``unknown item id``.

Models opt in through one hook, :meth:`tfmf.models.base.Recommender.export_spec`, returning
(from :mod:`tfmf.models.serving`)

* :class:`FactorSpec` -- scores are ``user_vectors @ item_vectors.T`` (MF, biased MF, the bias
  baseline, popularity: biases ride along as extra columns). Top-k uses TensorFlow
  Recommenders' ``BruteForce`` index over the item vectors.
* :class:`RowSpec` -- scores are a TF function of a user's interaction row (a
  ``tf.SparseTensor`` [b, n_items]); known users are scored from their training rows, which are
  stored in the SavedModel.
"""
from __future__ import annotations

import errno
import os

import numpy as np

from tfmf.fileio import atomic_directory
from tfmf.models.serving import FactorSpec, RowSpec  # noqa: F401  (re-exported for callers)


# --------------------------------------------------------------------------- writing
def export_model(model, user_ids: np.ndarray, item_ids: np.ndarray, out_dir: str, *, k: int = 100,
                 item_titles: np.ndarray | None = None) -> dict:
    """Writes ``model`` as a SavedModel at ``out_dir`` (atomically: temp dir, then rename).

    Args:
      model: a fitted Recommender whose ``export_spec()`` is not None.
      user_ids / item_ids: raw ids, position = the model's index (``ids.npz`` of a run).
      out_dir: target directory; an existing export there is replaced only once the new one
        is complete.
      k: top-k of the ``recommend`` signatures (capped at the number of items).
      item_titles: optional titles aligned with ``item_ids``.

    Returns:
      A summary dict: path, k, signatures, id dtypes.

    Raises:
      ValueError: the model does not support export, or id maps do not match the model.
    """
    import tfmf  # noqa: F401  (Keras 2 before TensorFlow)
    import tensorflow as tf

    spec = model.export_spec()
    if spec is None:
        raise ValueError(f"model {model.name!r} does not support SavedModel export")
    if len(user_ids) != model.n_users or len(item_ids) != model.n_items:
        raise ValueError(f"id maps ({len(user_ids)} users, {len(item_ids)} items) do not match "
                         f"the model ({model.n_users} users, {model.n_items} items)")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(int(k), model.n_items)
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(errno.EEXIST, "refusing to replace a file with a SavedModel "
                              "export", out_dir)
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not os.path.exists(
            os.path.join(out_dir, "saved_model.pb")):
        # Replacing is atomic, so an export may overwrite an older export -- nothing else.
        raise FileExistsError(errno.EEXIST, "refusing to replace a directory that is not a "
                              "SavedModel export", out_dir)
    parent = os.path.dirname(os.path.abspath(out_dir))
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise NotADirectoryError(errno.ENOTDIR, "cannot export below a regular file", parent)
    module = _build_module(tf, spec, model._seen, np.asarray(user_ids), np.asarray(item_ids),
                           k, item_titles)
    signatures = {"score": module.score, "recommend": module.recommend}
    if isinstance(spec, RowSpec):
        signatures["recommend_from_items"] = module.recommend_from_items
    with atomic_directory(out_dir) as tmp:
        tf.saved_model.save(module, tmp, signatures=signatures)
    return {"path": out_dir, "k": k, "signatures": sorted(signatures),
            "user_id_dtype": module.user_key_dtype.name,
            "item_id_dtype": module.item_key_dtype.name}


def export_run(run_dir: str, out_dir: str, k: int = 100) -> dict:
    """Exports the fitted model of a finished run directory (see :func:`export_model`)."""
    from tfmf.runner import load_run

    run = load_run(run_dir)
    return export_model(run.model, run.ids["user_ids"], run.ids["item_ids"], out_dir, k=k,
                        item_titles=run.ids.get("item_titles"))


# --------------------------------------------------------------------------- the module
def _key_dtype(ids: np.ndarray):
    import tensorflow as tf

    return tf.int64 if ids.dtype.kind in "iu" else tf.string


def _key_values(ids: np.ndarray, dtype):
    import tensorflow as tf

    return tf.constant(ids.astype(np.int64) if dtype == tf.int64 else ids.astype(str))


def _build_module(tf, spec, seen, user_ids, item_ids, k, item_titles):
    """The tf.Module holding tables, seen items and the scorer (defined here: TF is lazy)."""
    import scipy.sparse as sp

    n_items = len(item_ids)
    seen = sp.csr_matrix(seen if seen is not None else (len(user_ids), n_items))
    seen.sort_indices()
    user_dtype, item_dtype = _key_dtype(user_ids), _key_dtype(item_ids)

    def table(ids, dtype):
        init = tf.lookup.KeyValueTensorInitializer(
            _key_values(ids, dtype), tf.range(len(ids), dtype=tf.int32))
        return tf.lookup.StaticHashTable(init, default_value=-1)

    class Exported(tf.Module):
        def __init__(self):
            super().__init__(name="tfmf_export")
            self.user_key_dtype, self.item_key_dtype = user_dtype, item_dtype
            self.user_table = table(user_ids, user_dtype)
            self.item_table = table(item_ids, item_dtype)
            self.item_raw = tf.Variable(_key_values(item_ids, item_dtype), trainable=False,
                                        name="item_ids")
            self.titles = None if item_titles is None else tf.Variable(
                tf.constant(np.asarray(item_titles).astype(str)), trainable=False, name="titles")
            # Training interactions (CSR) for exclusion and, for row models, for scoring.
            self.seen_indptr = tf.Variable(seen.indptr.astype(np.int64), trainable=False,
                                           name="seen_indptr")
            self.seen_indices = tf.Variable(seen.indices.astype(np.int32), trainable=False,
                                            name="seen_indices")
            self.seen_values = tf.Variable(seen.data.astype(np.float32), trainable=False,
                                           name="seen_values")
            self.k = k
            self.is_rows = isinstance(spec, RowSpec)
            if self.is_rows:
                self.row_variables = list(spec.variables)
                self._score_rows = spec.score_rows
                # Only row models can fold in a new user, so only they get this signature.
                self.recommend_from_items = tf.function(
                    self._recommend_from_items,
                    input_signature=[tf.TensorSpec([None], item_dtype, name="items")])
            else:
                import tensorflow_recommenders as tfrs

                self.user_vectors = tf.Variable(np.asarray(spec.user_vectors, np.float32),
                                                trainable=False, name="user_vectors")
                self.item_vectors = tf.Variable(np.asarray(spec.item_vectors, np.float32),
                                                trainable=False, name="item_vectors")
                # Retrieve k + (most items any user has seen), so k unseen ones always remain.
                self.retrieve_k = int(min(n_items, k + int(np.diff(seen.indptr).max(initial=0))))
                self.index = tfrs.layers.factorized_top_k.BruteForce(k=self.retrieve_k)
                self.index.index(self.item_vectors, tf.range(n_items, dtype=tf.int32))

        # ---------------------------------------------------------- helpers (traced)
        def _lookup(self, tbl, keys, what):
            idx = tbl.lookup(keys)
            check = tf.debugging.assert_non_negative(idx, message=f"unknown {what} id")
            with tf.control_dependencies([check]):  # no gather may run before the check
                return tf.identity(idx)

        def _seen_rows(self, users):
            """(pairs [nnz, 2] int64 (row in batch, item index), values [nnz]) of training rows."""
            starts = tf.gather(self.seen_indptr, tf.cast(users, tf.int64))
            ends = tf.gather(self.seen_indptr, tf.cast(users, tf.int64) + 1)
            ranges = tf.ragged.range(starts, ends)
            pos, rows = ranges.flat_values, ranges.value_rowids()
            cols = tf.cast(tf.gather(self.seen_indices, pos), tf.int64)
            return tf.stack([rows, cols], axis=1), tf.gather(self.seen_values, pos)

        def _row_scores(self, pairs, values, n_rows):
            # CSR order is row-major with sorted columns: already a canonical SparseTensor.
            x = tf.SparseTensor(pairs, values, tf.stack([tf.cast(n_rows, tf.int64), n_items]))
            return tf.cast(self._score_rows(x), tf.float32)

        def _top_k_masked(self, scores, pairs):
            masked = tf.tensor_scatter_nd_update(
                scores, pairs, tf.fill([tf.shape(pairs)[0]], float("-inf")))
            return tf.math.top_k(masked, k=self.k)

        def _output(self, scores, idx):
            out = {"item_ids": tf.gather(self.item_raw, idx), "scores": scores}
            if self.titles is not None:
                out["titles"] = tf.gather(self.titles, idx)
            return out

        def _recommend_idx(self, users):
            n = tf.shape(users)[0]
            pairs, values = self._seen_rows(users)
            if self.is_rows:
                top = self._top_k_masked(self._row_scores(pairs, values, n), pairs)
                return top.values, top.indices
            q = tf.gather(self.user_vectors, users)
            cand_scores, cand_idx = self.index(q, k=self.retrieve_k)
            seen = tf.scatter_nd(pairs, tf.ones([tf.shape(pairs)[0]], tf.bool),
                                 tf.cast(tf.stack([n, n_items]), tf.int64))
            is_seen = tf.gather(seen, cand_idx, batch_dims=1)
            adj = tf.where(is_seen, tf.constant(float("-inf")), cand_scores)
            # cand_* are sorted by (score desc, index asc); top_k keeps that order for ties.
            top = tf.math.top_k(adj, k=self.k)
            return top.values, tf.gather(cand_idx, top.indices, batch_dims=1)

        # ---------------------------------------------------------- signatures
        @tf.function(input_signature=[tf.TensorSpec([None], user_dtype, name="users"),
                                      tf.TensorSpec([None], item_dtype, name="items")])
        def score(self, users, items):
            u = self._lookup(self.user_table, users, "user")
            i = self._lookup(self.item_table, items, "item")
            if self.is_rows:
                all_scores = self._row_scores(*self._seen_rows(u), tf.shape(u)[0])
                return {"scores": tf.gather(all_scores, i, batch_dims=1)}
            s = tf.reduce_sum(tf.gather(self.user_vectors, u) * tf.gather(self.item_vectors, i),
                              axis=1)
            return {"scores": s}

        @tf.function(input_signature=[tf.TensorSpec([None], user_dtype, name="users")])
        def recommend(self, users):
            scores, idx = self._recommend_idx(self._lookup(self.user_table, users, "user"))
            return self._output(scores, idx)

        def _recommend_from_items(self, items):
            i = tf.cast(self._lookup(self.item_table, items, "item"), tf.int64)
            i = tf.sort(tf.unique(i).y)  # canonical SparseTensor order
            pairs = tf.stack([tf.zeros_like(i), i], axis=1)
            top = self._top_k_masked(
                self._row_scores(pairs, tf.ones([tf.shape(i)[0]], tf.float32), 1), pairs)
            return self._output(top.values[0], top.indices[0])

    return Exported()
