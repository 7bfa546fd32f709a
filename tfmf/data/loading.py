"""``load_dataset(DataConfig)``: a dataset name or file path -> prepared InteractionData."""
from __future__ import annotations

import os

from tfmf.config import DataConfig
from tfmf.data.interactions import InteractionData
from tfmf.errors import DataError

SYNTHETIC = ("synthetic-explicit", "synthetic-implicit")


def is_sharded(source: str) -> bool:
    """Whether ``source`` is a directory written by ``tfmf data convert`` (or its manifest)."""
    from tfmf.data.shards import MANIFEST

    return (os.path.basename(source) == MANIFEST and os.path.isfile(source)) or \
        os.path.isfile(os.path.join(source, MANIFEST))


def load_raw(cfg: DataConfig, rank: int = 0, size: int = 1, *, timestamps: bool = True,
             min_rating: float | None = None) -> InteractionData:
    """Loads ``cfg.source`` without binarizing or filtering.

    Sources: "sample", a MovieLens release name (see :data:`tfmf.data.movielens.SPECS`),
    "synthetic-explicit", "synthetic-implicit" (parameters from ``cfg.synthetic``), a
    directory written by ``tfmf data convert`` (or its manifest.json: only rank ``rank`` of
    ``size``'s shards are read, see :func:`tfmf.data.shards.read_shards`), or a path read by
    :func:`tfmf.data.readers.read_table` with the config's format options.

    For a sharded source, ``timestamps=False`` skips the timestamp column and ``min_rating``
    drops lower-rated rows while each shard is read (other sources ignore both).
    """
    from tfmf.data import movielens

    src = cfg.source
    if src == "sample":
        from tfmf.data.sample import load_sample

        return load_sample()
    if src in movielens.SPECS:
        return movielens.load_movielens(src, cfg.data_dir, cfg.download)
    if src in SYNTHETIC:
        from tfmf.data import synthetic

        s = cfg.synthetic
        if src == "synthetic-explicit":
            scale = tuple(cfg.rating_scale) if cfg.rating_scale else None
            return synthetic.explicit_low_rank(s.n_users, s.n_items, s.rank, s.noise, s.density,
                                               s.seed, rating_scale=scale)[0]
        return synthetic.implicit_power_law(s.n_users, s.n_items, s.nnz, s.popularity_exponent,
                                            s.activity_exponent, s.seed)
    if is_sharded(src):
        from tfmf.data.shards import read_shards

        return read_shards(src, rank, size, min_rating=min_rating, timestamps=timestamps)
    if not os.path.exists(src):
        known = ["sample", *movielens.SPECS, *SYNTHETIC]
        raise DataError(f"no such file, and not a known dataset name (known: {', '.join(known)})",
                        src)
    from tfmf.data.readers import read_table

    return read_table(src, format=cfg.format, delimiter=cfg.delimiter, header=cfg.header,
                      columns=cfg.columns or None, rating_scale=cfg.rating_scale,
                      duplicates=cfg.duplicates, implicit=cfg.implicit)


def run_timestamps(cfg: DataConfig) -> bool:
    """Whether a run on ``cfg`` reads timestamps: only a temporal split needs them (they are 8
    of a sharded row's 20 bytes)."""
    return cfg.split.kind == "temporal"


def load_dataset(cfg: DataConfig, rank: int = 0, size: int = 1, *,
                 timestamps: bool = True) -> InteractionData:
    """Loads ``cfg.source``, then applies ``binarize_threshold`` and the min-count filters.

    Args:
      cfg: data section of a run config.
      rank, size: for a sharded source (``tfmf data convert``), read only the shards of rank
        ``rank`` of ``size`` (indices stay global). Other sources ignore them.
      timestamps: False: a sharded source is read without its timestamps (a temporal split
        needs them; nothing else does). Other sources ignore it.

    Returns:
      InteractionData (re-indexed contiguously when users/items were dropped).

    Raises:
      DataError: unknown source, missing file/copy, or malformed data.
    """
    if size > 1 and (cfg.min_user_interactions > 0 or cfg.min_item_interactions > 0) \
            and is_sharded(cfg.source):
        from tfmf.errors import ConfigError

        raise ConfigError("a rank's shards cannot be filtered on their own (every rank must "
                          "keep the global id space): filter when converting, e.g. `tfmf data "
                          "convert SOURCE --out DIR --set data.min_user_interactions=5`",
                          key="data.min_user_interactions" if cfg.min_user_interactions
                          else "data.min_item_interactions")
    # Binarizing keeps rows >= the threshold: a sharded source drops the others as it reads.
    data = load_raw(cfg, rank, size, timestamps=timestamps, min_rating=cfg.binarize_threshold)
    if cfg.binarize_threshold is not None:
        data = data.binarize(cfg.binarize_threshold)
    if cfg.min_user_interactions > 0 or cfg.min_item_interactions > 0:
        data = data.compact(cfg.min_user_interactions, cfg.min_item_interactions)
    if data.nnz == 0:
        raise DataError(f"{cfg.source}: no interactions left after binarizing/filtering")
    return data


def inspect(source_or_cfg: str | DataConfig) -> dict:
    """``InteractionData.summary()`` of a source name/path or a DataConfig."""
    cfg = source_or_cfg if isinstance(source_or_cfg, DataConfig) else DataConfig(source=source_or_cfg)
    return load_dataset(cfg).summary()
