"""``speed-keras-loop``: Keras ``fit`` against the loop it replaced, same model, same run.

    python -m pipelines.benchmark speed-keras-loop --scale full --out runs/bench

tfmf's gradient models train through ``tf_keras.Model.fit`` (tfmf.training.fit). Before, a
hand-written Trainer ran them: a ``tf.function`` over up to ``steps_per_execution`` steps that
pulled batches with ``get_next_as_optional`` and stacked every step's loss components into a
TensorArray (git 34e832b^: tfmf/training/trainer.py). That loop is re-created here, as a
reference only, so the question "is the Keras path slower?" is answered on the same model, the
same compiled step body (``compute_losses`` + ``optimizer.minimize``), the same dataset and the
same machine load: the two loops alternate, a few epochs each, for several rounds, and the
medians of their epoch times are compared.

Timed epochs exclude the first call of each loop (tracing). The Keras side runs with the
callbacks tfmf always installs (DivergenceGuard, EpochInfo), so it pays for divergence naming
and per-epoch learning-rate/seconds bookkeeping that the old loop did in Python.
"""
from __future__ import annotations

import time

import numpy as np

from pipelines.benchmark import ratio, suite


def reference_loop(model, spe: int):
    """The previous Trainer's loop around ``model``'s step: ``(dataset) -> (wall, CPU) s``."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def step(batch):
        losses = model.minimize_step(batch)
        return tf.stack([tf.cast(losses[k], tf.float32) for k in sorted(losses)])

    @tf.function
    def run_steps(iterator, n):
        out = tf.TensorArray(tf.float32, size=0, dynamic_size=True)
        for i in tf.range(n):
            batch = iterator.get_next_as_optional()
            if not batch.has_value():
                break
            out = out.write(i, step(batch.get_value()))
        return out.stack()

    def epoch(dataset) -> tuple[float, float]:
        it = iter(dataset)
        t0, c0 = time.perf_counter(), time.process_time()
        while run_steps(it, tf.constant(spe)).numpy().shape[0] == spe:
            pass
        return time.perf_counter() - t0, time.process_time() - c0

    return epoch


def compare(rec, train, cfg, rounds: int, epochs_per_round: int) -> dict:
    """Median epoch seconds of Keras ``fit`` and of the reference loop, interleaved."""
    import tf_keras

    from tfmf.training import callbacks as cb

    rec.fit(train, cfg)  # builds, compiles and traces the model the tfmf way
    model = rec.model
    dataset = rec.make_dataset(train, cfg, epoch=0, rank=0, size=1)
    steps = rec.steps_per_epoch(train, cfg, 1)

    class Clock(tf_keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds: list[tuple[float, float]] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append((time.perf_counter() - self.t0, time.process_time() - self.c0))

    def keras(n: int) -> list[tuple[float, float]]:
        clock = Clock()
        model.fit(dataset, epochs=n, verbose=0,
                  callbacks=[cb.DivergenceGuard(steps), cb.EpochInfo(steps), clock])
        return clock.seconds

    ref = reference_loop(model, cfg.steps_per_execution)
    ref(dataset)  # its trace
    keras(1)
    k_s, r_s = [], []
    for _ in range(rounds):
        r_s += [ref(dataset) for _ in range(epochs_per_round)]
        k_s += keras(epochs_per_round)
    (k, kc), (r, rc) = np.median(k_s, axis=0), np.median(r_s, axis=0)
    return {"steps/epoch": steps, "keras ms/step": 1e3 * k / steps,
            "reference ms/step": 1e3 * r / steps, "keras x_reference speed": ratio(r, k),
            "keras CPU-ms/step": 1e3 * kc / steps, "reference CPU-ms/step": 1e3 * rc / steps,
            "keras x_reference CPU": ratio(rc, kc), "epochs timed each": len(k_s)}


@suite("speed-keras-loop")
def keras_loop(args) -> dict:
    from pipelines.benchmark import explicit_ml100k_shaped
    from tfmf import registry
    from tfmf.config import TrainConfig
    from tfmf.data.synthetic import implicit_power_law

    tiny = args.scale == "tiny"
    rounds, per = (1, 1) if tiny else (6, 3)
    rows = []
    train, _ = explicit_ml100k_shaped()
    runs = [("mf", 1024), ("biased_mf", 1024), ("biased_mf", 256)]
    for name, batch in runs[:1] if tiny else runs:
        cls = registry.get(name)
        rec = cls(cls.config_class(embedding_dim=32))
        cfg = TrainConfig(optimizer="adam", learning_rate=1e-3, batch_size=batch, epochs=1,
                          verbose=0, checkpoint_every=0)
        rows.append({"model": name, "batch": batch, **compare(rec, train, cfg, rounds, per)})
    # Mult-VAE: a batch is a user's whole row, so the step is compute, not overhead.
    shape = (1000, 500, 20_000) if tiny else (10_000, 5_000, 500_000)
    data = implicit_power_law(*shape, seed=0)
    cls = registry.get("mult_vae")
    rec = cls(cls.config_class(dims=[200, 64] if tiny else [600, 200]))
    cfg = TrainConfig(optimizer="adam", learning_rate=1e-3, batch_size=500, epochs=1,
                      verbose=0, checkpoint_every=0)
    rows.append({"model": f"mult_vae {shape[0]}x{shape[1]}", "batch": 500,
                 **compare(rec, data, cfg, rounds, per)})
    notes = [
        "keras: tf_keras Model.fit with tfmf's always-on callbacks; reference: the previous "
        "hand-written Trainer loop (TensorArray of stacked losses per step, "
        "get_next_as_optional), re-created in this file around the same compiled step body.",
        f"Interleaved: {rounds} rounds of {per} epochs each, medians; steps_per_execution 16; "
        "first calls (tracing) excluded. keras x_reference > 1: fit is faster. CPU: process "
        "CPU seconds (all threads), steadier than wall seconds on a shared machine.",
        "MF rows: synthetic rank-8 ratings shaped like ML-100K (80k train ratings), Adam, 32 "
        "dims. Mult-VAE: implicit_power_law" + str(shape) + ".",
    ]
    return {"tables": {"Keras fit vs the previous Trainer loop": rows}, "notes": notes}
