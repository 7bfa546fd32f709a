"""Horovod's Keras callbacks and optimizer for tf_keras models (Keras 2 on TensorFlow 2.18).

Why this module exists: ``horovod.tensorflow.keras`` 0.28.1 builds its callbacks on
``from keras import backend as K``. With TensorFlow 2.16+ ``keras`` is Keras 3 (installed as
TensorFlow's dependency) even when ``tf.keras`` is tf_keras, so ``MetricAverageCallback`` fails
on ``K.constant`` ("module 'keras.backend' has no attribute 'constant'"). Horovod's callback
logic lives in ``horovod._keras.callbacks`` as ``*Impl`` classes that take the backend as an
argument; the classes below are those same implementations bound to **tf_keras's** backend and
``tf_keras.callbacks.Callback``, so nothing of Horovod is patched and Horovod's own code runs.

``DistributedOptimizer`` is Horovod's (``horovod.tensorflow.keras.DistributedOptimizer``): it
subclasses the given optimizer's class and allreduces in ``_compute_gradients``, which works on
tf_keras' legacy optimizers as is. Import this module only under horovodrun (it imports
Horovod); :mod:`tfmf.distributed` does so lazily.

Usage in a user's script (``horovodrun --gloo -np 2 python train.py``)::

    import tfmf, tf_keras
    from tfmf import horovod_keras as hk
    hk.init()
    model.compile(optimizer=hk.DistributedOptimizer(tf_keras.optimizers.legacy.Adam(1e-3)))
    model.fit(ds, callbacks=[hk.BroadcastGlobalVariablesCallback(0),
                             hk.MetricAverageCallback(),
                             hk.LearningRateWarmupCallback(initial_lr=1e-3, warmup_epochs=2)])
"""
from __future__ import annotations

import horovod.tensorflow.keras as _hvd_keras
import tf_keras
from horovod._keras import callbacks as _impl

DistributedOptimizer = _hvd_keras.DistributedOptimizer
init, rank, size, local_rank = _hvd_keras.init, _hvd_keras.rank, _hvd_keras.size, _hvd_keras.local_rank


class BroadcastGlobalVariablesCallback(_impl.BroadcastGlobalVariablesCallbackImpl,
                                       tf_keras.callbacks.Callback):
    """Broadcasts model and optimizer variables from ``root_rank`` after the first batch."""

    def __init__(self, root_rank: int = 0, device: str = ""):
        super().__init__(tf_keras.backend, root_rank, device)


class MetricAverageCallback(_impl.MetricAverageCallbackImpl, tf_keras.callbacks.Callback):
    """Averages the epoch logs over ranks (place it before callbacks that read them)."""

    def __init__(self, device: str = ""):
        super().__init__(tf_keras.backend, device)


class LearningRateWarmupCallback(_impl.LearningRateWarmupCallbackImpl,
                                 tf_keras.callbacks.Callback):
    """Goyal et al.'s gradual warm-up from ``initial_lr / size`` to ``initial_lr``."""

    def __init__(self, initial_lr: float, warmup_epochs: int = 5, momentum_correction: bool = True,
                 steps_per_epoch: int | None = None, verbose: int = 0):
        super().__init__(tf_keras.backend, initial_lr, warmup_epochs, momentum_correction,
                         steps_per_epoch, verbose)
