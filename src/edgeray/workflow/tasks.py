"""The workflow's tasks as plain functions (Parsl runs them in its workers; they run as well without it).

Each takes ``inputs`` (the Parsl futures it must wait for) and ``parsl_resource_specification`` (its priority),
both for Parsl and ignored otherwise, and returns a record with its outputs and its own ``start``/``end`` (Unix
seconds) and ``host``, for the timeline. Each uses one torch thread, so that tasks running side by side share the
cores instead of fighting over them.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path


def _record(name: str, start: float, **outputs) -> dict:
    return {"task": name, "start": start, "end": time.time(), "host": socket.gethostname(), **outputs}


def reconstruct(
    scan_path: str,
    product_path: str,
    epochs: int = 30,
    engine: str = "lsqml",
    inputs=(),
    parsl_resource_specification=None,
) -> dict:
    """Iterative reconstruction of a scan file -> product file. (``inputs``: tasks to wait for, under Parsl.)"""
    start = time.time()
    import torch

    from edgeray.io import read_cxi, write_product
    from edgeray.ptycho.reconstruct import run

    torch.set_num_threads(1)
    scan = read_cxi(scan_path)
    result = run(scan, engine, epochs)
    write_product(product_path, result.product)
    return _record("reconstruct", start, scan=scan_path, product=product_path, engine=engine, epochs=epochs)


def make_labels(scan_path: str, product_path: str, set_path: str, inputs=(), parsl_resource_specification=None) -> dict:
    """A scan and its reconstruction -> a training set (labels: the reconstructed patches)."""
    start = time.time()
    from edgeray.io import read_cxi, read_product
    from edgeray.nn.trainset import samples_from_reconstruction, write_trainset

    scan = read_cxi(scan_path)
    samples = samples_from_reconstruction(scan, read_product(product_path))
    write_trainset(set_path, [samples], {"source": scan_path, "labels": product_path})
    return _record("labels", start, scan=scan_path, trainset=set_path, samples=len(samples["frames"]))


def finetune(
    set_paths: list[str],
    init_model: str,
    out_dir: str,
    epochs: int = 5,
    seed: int = 0,
    replay: int | None = None,
    inputs=(),
    parsl_resource_specification=None,
) -> dict:
    """Fine-tune ``init_model`` on the labelled frames so far -> a new model directory.

    ``replay``: None trains on every frame of every set; a number trains on the newest set (the last path) plus
    that many frames drawn at random from the earlier ones, so each run costs the same however long the
    experiment has gone on.
    """
    start = time.time()
    import numpy as np
    import torch

    from edgeray.nn.checkpoint import load_model
    from edgeray.nn.models import ModelConfig
    from edgeray.nn.set_training import TrainOptions, train
    from edgeray.nn.trainset import DATASETS, write_trainset

    torch.set_num_threads(1)
    merged = Path(out_dir).with_suffix(".trainset.h5")
    import h5py

    samples = []
    rng = np.random.default_rng(seed)
    earlier_total = 0
    for path in set_paths[:-1]:
        with h5py.File(path) as h5:
            earlier_total += h5["frames"].shape[0]
    for position, path in enumerate(set_paths):
        with h5py.File(path) as h5:
            n = h5["frames"].shape[0]
            if replay is None or position == len(set_paths) - 1:
                rows = np.arange(n)
            else:  # this set's share of the replay sample
                share = round(replay * n / max(earlier_total, 1))
                rows = np.sort(rng.choice(n, size=min(share, n), replace=False))
            samples.append({key: np.asarray(h5[key][rows]) if len(rows) else np.asarray(h5[key][:0])
                            for key in DATASETS})  # fmt: skip
    write_trainset(merged, samples, {"sources": json.dumps(set_paths)})
    _, card = load_model(init_model)
    config = ModelConfig(**card["config"])
    options = TrainOptions(epochs=epochs, batch_size=32, learning_rate=1e-3, seed=seed, init_from=init_model)
    result = train(merged, out_dir, config, options)
    return _record("finetune", start, model=out_dir, init=init_model, sets=set_paths,
                   val_loss=result["history"]["val_loss"][-1])  # fmt: skip


def finetune_physics(
    scan_path: str,
    product_path: str | None,
    init_model: str,
    out_dir: str,
    epochs: int = 3,
    seed: int = 0,
    inputs=(),
    parsl_resource_specification=None,
) -> dict:
    """Fine-tune the edge model ``init_model`` on a scan's own frames, no labels (the physics of each frame and of
    overlapping neighbours; :mod:`edgeray.nn.finetune`), with the probe of ``product_path`` when given."""
    start = time.time()
    import torch

    from edgeray.io import read_cxi
    from edgeray.nn.finetune import FinetuneOptions, finetune_on_scan

    torch.set_num_threads(1)
    result = finetune_on_scan(read_cxi(scan_path), init_model, out_dir, product_path,
                              FinetuneOptions(regime="physics", group_size=1, epochs=epochs,
                                              learning_rate=3e-4, groups_per_step=16, seed=seed))  # fmt: skip
    return _record("finetune", start, model=out_dir, init=init_model, scan=scan_path,
                   holdout_deviance_before=result.holdout_before,
                   holdout_deviance_after=result.holdout_after)  # fmt: skip


def finetune_sample(
    scan_path: str,
    product_path: str,
    init_model: str,
    out_dir: str,
    epochs: int = 5,
    seed: int = 0,
    inputs=(),
    parsl_resource_specification=None,
) -> dict:
    """Teach the edge model ``init_model`` the scan's sample from its reconstruction ``product_path``, as
    ``edgeray nn finetune`` does at its defaults (the ``twin`` regime: frames simulated from the reconstruction beside
    the procedural corpus, one frame at a time as the edge inverts), the round kept that scores best on a held-out
    region (its label error)."""
    start = time.time()
    import torch

    from edgeray.io import read_cxi, read_product
    from edgeray.nn.finetune import FinetuneOptions, finetune_on_scan

    torch.set_num_threads(1)
    result = finetune_on_scan(read_cxi(scan_path), init_model, out_dir, product_path,
                              FinetuneOptions(regime="twin", group_size=1, epochs=epochs, seed=seed),
                              labels_from=read_product(product_path))  # fmt: skip
    return _record("finetune", start, model=out_dir, init=init_model, scan=scan_path,
                   holdout_deviance_before=result.holdout_before, holdout_deviance_after=result.holdout_after,
                   kept_epoch=result.card["finetuned"]["kept_epoch"])  # fmt: skip


def deploy(model_dir: str, registry: str, provenance: dict, inputs=(), parsl_resource_specification=None) -> dict:
    """Publish a model to the registry the edge follows (it swaps once the model passes validation)."""
    start = time.time()
    from edgeray.nn.registry import Registry

    version = Registry(registry).publish(model_dir, provenance)
    return _record("deploy", start, model=model_dir, version=version)
