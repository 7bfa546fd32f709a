"""Data layer: containers, loaders, splits and tf.data pipelines (TensorFlow loads lazily)."""
from tfmf.data.interactions import InteractionData
from tfmf.data.pipelines import rating_dataset, steps_per_epoch, user_rows

__all__ = ["InteractionData", "rating_dataset", "steps_per_epoch", "user_rows"]
