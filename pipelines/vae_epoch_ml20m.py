"""Mult-VAE training throughput and peak memory on ML-20M-shaped synthetic data.

    python pipelines/vae_epoch_ml20m.py                 # 2 full epochs (274 steps each)
    python pipelines/vae_epoch_ml20m.py --steps 30      # 2 epochs cut to 30 steps, extrapolated

Data: ``implicit_power_law(136677, 20108, 10_000_000)`` (ML-20M's users, items and ~nnz after
binarizing), all of it loaded and fed through the real pipeline (so memory is that of a full
run). The model uses configs/ml20m_mult_vae.yaml (the paper's [600, 200] network, batch 500,
Adam 1e-3). ``--steps`` cuts each epoch to its first N batches of the shuffled order; users/s
is measured on the second epoch (the first one includes tracing the train step) and a full
epoch's time is extrapolated as ``136677 / users_per_s``. Peak RSS is the process maximum
(data generation included). CPU seconds are printed too: on a shared machine they show the
idle-machine throughput that wall time hides.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import numpy as np

import tfmf  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import tf_keras

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (136_677, 20_108, 10_000_000)


def peak_rss_gb() -> float:
    """Peak resident set size of this process in GB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


class CpuClock(tf_keras.callbacks.Callback):
    """Records this process's CPU time (user + system, all threads) at every epoch end."""

    def __init__(self):
        super().__init__()
        self.cpu = [time.process_time()]

    def on_epoch_end(self, epoch, logs=None):
        self.cpu.append(time.process_time())


def capped(base: type, steps: int) -> type:
    """``base`` (a KerasRecommender class) with each epoch cut to its first ``steps`` batches."""

    class Capped(base):
        def make_dataset(self, *a, **kw):
            return super().make_dataset(*a, **kw).take(steps)

        def steps_per_epoch(self, *a, **kw):
            return steps

    return Capped


def measure(steps: int = 0, config: str | None = None, overrides=(), seed: int = 0,
            shape: tuple[int, int, int] = SHAPE, data=None) -> dict:
    """Two epochs of the model in ``config`` on power-law implicit data; throughput of the 2nd.

    Args:
      steps: batches per epoch (0: a full epoch).
      config: run config (default configs/ml20m_mult_vae.yaml).
      overrides: ``--set`` overrides.
      seed: data seed.
      shape: (users, items, nnz) of the synthetic data.
      data: reuse this InteractionData instead of generating ``shape``.

    Returns:
      A dict: model, dims, batch_size, precision, n_users, steps, full_steps, epoch1_s,
      epoch2_s, users_per_s, full_epoch_s (extrapolated), cpu_s, cores_busy,
      users_per_cpu_s, loss1, loss2, data_s, peak_rss_gb.
    """
    from tfmf import registry
    from tfmf.config import load_config
    from tfmf.data.synthetic import implicit_power_law

    cfg = load_config(config or os.path.join(ROOT, "configs", "ml20m_mult_vae.yaml"),
                      # Throughput only: no validation users, so no epoch selection.
                      overrides=["train.epochs=2", "train.verbose=0",
                                 "train.checkpoint_every=0", "train.restore_best=false",
                                 *overrides])
    t0 = time.perf_counter()
    if data is None:
        data = implicit_power_law(*shape, seed=seed)
    data_s = time.perf_counter() - t0
    base = registry.get(cfg.model_name)
    full_steps = base(cfg.model).steps_per_epoch(data, cfg.train, 1)
    steps = min(steps or full_steps, full_steps)
    n_active = int(np.unique(data.users).size)
    n_users = n_active
    if steps < full_steps:  # every batch but an epoch's last is full
        n_users = steps * cfg.train.batch_size
    model = capped(base, steps)(cfg.model)
    clock = CpuClock()
    model.fit(data, cfg.train, callbacks=[clock])
    first, second = model.history[0], model.history[-1]
    ups = n_users / second["seconds"]
    cpu = clock.cpu[-1] - clock.cpu[-2]
    return {"model": cfg.model_name, "dims": list(cfg.model.dims),
            "batch_size": cfg.train.batch_size, "precision": cfg.train.precision,
            "n_users": n_users, "n_active_users": n_active, "n_items": data.n_items,
            "nnz": data.nnz, "steps": steps, "full_steps": full_steps,
            "epoch1_s": first["seconds"], "epoch2_s": second["seconds"], "users_per_s": ups,
            "full_epoch_s": n_active / ups, "cpu_s": cpu, "cores_busy": cpu / second["seconds"],
            "users_per_cpu_s": n_users / cpu, "loss1": first["loss"], "loss2": second["loss"],
            "data_s": data_s, "peak_rss_gb": peak_rss_gb()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=0, help="batches per epoch (0: a full epoch)")
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "ml20m_mult_vae.yaml"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    r = measure(args.steps, args.config, args.set, args.seed)
    print(f"data: {r['n_active_users']} users, {r['n_items']} items, {r['nnz']} nnz "
          f"({r['data_s']:.1f}s)")
    print(f"{r['model']} dims={r['dims']} batch={r['batch_size']} "
          f"precision={r['precision']}: {r['n_users']} users/epoch "
          f"({r['steps']} of {r['full_steps']} steps)")
    print(f"epoch 1 (incl. tracing): {r['epoch1_s']:.1f}s; epoch 2: {r['epoch2_s']:.1f}s "
          f"-> {r['users_per_s']:,.0f} users/s, full ML-20M-shaped epoch "
          f"~{r['full_epoch_s']:.0f}s")
    # CPU seconds barely depend on how busy a shared machine is: users per CPU-second times the
    # cores TF keeps busy bounds the throughput of an otherwise idle machine.
    print(f"epoch 2 CPU time {r['cpu_s']:.1f}s ({r['cores_busy']:.2f} of {os.cpu_count()} "
          f"cores busy on average) -> {r['users_per_cpu_s']:,.0f} users per CPU-second")
    print(f"loss {r['loss1']:.2f} -> {r['loss2']:.2f}; peak RSS {r['peak_rss_gb']:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
