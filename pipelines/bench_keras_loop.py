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

#: The previous Trainer's default steps per compiled call (TrainConfig's default was 16).
REFERENCE_SPE = 16


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

    default_spe = cfg.steps_per_execution
    ref = reference_loop(model, REFERENCE_SPE)
    ref(dataset)  # its trace
    k_s, d_s, r_s = [], [], []
    for r in range(rounds + 1):  # round 0 traces the Keras functions (not timed)
        n = epochs_per_round if r else 1
        r_s += [ref(dataset) for _ in range(n)]
        for spe, out in ((REFERENCE_SPE, k_s), (default_spe, d_s)):
            # The compiled loop reads this variable at every call: no retrace.
            model._steps_per_execution.assign(spe)
            seconds = keras(n)
            if r:
                out += seconds
    (k, kc), (d, dc), (r, rc) = (np.median(x, axis=0) for x in (k_s, d_s, r_s))
    ms = lambda s: 1e3 * s / steps
    return {"steps/epoch": steps, "reference CPU-ms/step": ms(rc),
            "keras CPU-ms/step": ms(kc), "keras x_reference CPU": ratio(rc, kc),
            f"keras spe {default_spe} CPU-ms/step": ms(dc),
            f"keras spe {default_spe} x_reference CPU": ratio(rc, dc),
            "reference ms/step": ms(r), "keras ms/step": ms(k),
            "keras x_reference wall": ratio(r, k), f"keras spe {default_spe} x_reference wall":
            ratio(r, d), "epochs timed each": len(k_s)}


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
        f"Interleaved: {rounds} rounds of {per} epochs each of reference (steps_per_execution "
        f"{REFERENCE_SPE}, the old default), keras at {REFERENCE_SPE} and keras at tfmf's "
        "default; medians; tracing excluded. x_reference > 1: fit is faster. CPU: process CPU "
        "seconds (all threads), steadier than wall seconds on a shared machine.",
        "MF rows: synthetic rank-8 ratings shaped like ML-100K (80k train ratings), Adam, 32 "
        "dims. Mult-VAE: implicit_power_law" + str(shape) + ".",
    ]
    return {"tables": {"Keras fit vs the previous Trainer loop": rows}, "notes": notes}
