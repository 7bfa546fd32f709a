"""Data layer: containers, loaders, splits and tf.data pipelines."""
from tfmf.data.interactions import InteractionData

__all__ = ["InteractionData"]
