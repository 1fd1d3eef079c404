"""Training the edge model on the procedural corpus: supervised L1 on amplitude and phase plus the physics term.

The loss of a batch (see :mod:`edgeray.nn.physics`), each term weighted by where the probe lights the patch:

- L1 of the amplitude, and of the phase after the best constant phase (a frame does not fix it);
- ``slope_weight`` x the L1 of the patch's mean phase gradient (what stitching turns into large-scale phase);
- ``physics_weight`` x the Poisson deviance between the counts and ``|FFT(probe x predicted patch)|^2``;
- a small pull of the predicted mean phase to 0 (it is free; this keeps it from drifting).

Every batch is new (:class:`edgeray.nn.corpus.Corpus`); validation uses a fixed batch of another seed. Training
can be stopped at any time and resumed (``resume``): the weights, the optimizer, the corpus's random state and the
history are saved every ``checkpoint_every`` steps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from edgeray.device import resolve_device
from edgeray.nn.checkpoint import load_model, save_model
from edgeray.nn.corpus import Corpus, CorpusBatch, CorpusConfig
from edgeray.nn.models import EdgeNet, ModelConfig, build_model, count_parameters
from edgeray.nn.physics import (
    far_field_intensity,
    mean_phase,
    poisson_deviance,
    probe_weights,
    slope_loss,
    supervised_losses,
)

VALIDATION_SEED_OFFSET = 1_000_003


@dataclass
class CorpusTrainOptions:
    """Options of :func:`train_on_corpus`.

    Attributes:
        steps: optimizer steps; each sees ``objects_per_step * corpus.frames_per_object`` new samples.
        objects_per_step: objects drawn per step.
        learning_rate: peak learning rate (AdamW), after a warm-up of ``warmup_steps``, then a cosine to 1%.
        physics_weight, slope_weight: weights of the Poisson deviance and of the slope term.
        weight_decay: AdamW's.
        checkpoint_every: steps between checkpoints (and validation).
        validation_objects: objects in the fixed validation batch.
        device: ``cpu``, ``cuda`` or ``auto``.
        init_from: a model directory to start from (its architecture wins).
    """

    steps: int = 20_000
    objects_per_step: int = 16
    learning_rate: float = 2e-3
    warmup_steps: int = 200
    physics_weight: float = 0.1
    slope_weight: float = 1.0
    weight_decay: float = 1e-4
    checkpoint_every: int = 500
    validation_objects: int = 32
    device: str = "cpu"
    init_from: str | None = None


def batch_losses(model: EdgeNet, batch: CorpusBatch, options: CorpusTrainOptions, device) -> dict[str, torch.Tensor]:
    """Every loss term of ``batch`` (means over its samples) and ``total``, the weighted sum."""
    counts = batch.counts.to(device)
    scale = batch.scale.to(device)[:, None, None]
    target = batch.patch.to(device)
    inputs = torch.sqrt(counts / scale)[:, None]
    amplitude, phase = model(inputs)
    amplitude, phase = amplitude[:, 0], phase[:, 0]
    probe = model.complex_probe()
    weights = probe_weights(probe)
    amplitude_l1, phase_l1 = supervised_losses(amplitude, phase, target, weights)
    radius = float(torch.sqrt(2 * (weights * model._radius_sq(weights.shape[-1]).to(device)).sum() / weights.sum()))
    slope = slope_loss(amplitude, phase, target, weights, radius)
    intensity = far_field_intensity(torch.polar(amplitude, phase), probe)
    physics = poisson_deviance(intensity, inputs[:, 0] ** 2)
    drift = mean_phase(amplitude, phase, weights).square()
    terms = {
        "amplitude_l1": amplitude_l1.mean(),
        "phase_l1": phase_l1.mean(),
        "slope": slope.mean(),
        "physics": physics.mean(),
        "phase_drift": drift.mean(),
    }
    terms["total"] = (terms["amplitude_l1"] + terms["phase_l1"] + options.slope_weight * terms["slope"]
                      + options.physics_weight * terms["physics"] + 0.01 * terms["phase_drift"])  # fmt: skip
    return terms


def learning_rate(step: int, options: CorpusTrainOptions) -> float:
    """Linear warm-up, then a cosine from ``learning_rate`` to 1% of it at ``steps``."""
    if step < options.warmup_steps:
        return options.learning_rate * (step + 1) / options.warmup_steps
    progress = min(1.0, (step - options.warmup_steps) / max(options.steps - options.warmup_steps, 1))
    return options.learning_rate * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_on_corpus(
    output: str | Path,
    config: ModelConfig,
    corpus_config: CorpusConfig | None = None,
    options: CorpusTrainOptions | None = None,
    resume: bool = False,
    progress: Callable[[int, dict], None] | None = None,
) -> dict:
    """Train an ``edge`` model on the procedural corpus and write its directory ``output``.

    ``progress(step, metrics)`` is called at every checkpoint. Returns the model card (also ``output/model.json``).
    """
    output = Path(output)
    options = options or CorpusTrainOptions()
    corpus_config = corpus_config or CorpusConfig(frame_size=config.frame_size, probe=config.probe,
                                                  probe_diameter_px=config.probe_diameter_px)  # fmt: skip
    if config.kind != "edge":
        raise ValueError(f"the corpus trains the 'edge' model (physics conventions), not {config.kind!r}")
    if corpus_config.frame_size != config.frame_size:
        raise ValueError(f"corpus frames are {corpus_config.frame_size}^2, the model takes {config.frame_size}^2")
    device = resolve_device(options.device)
    torch.manual_seed(corpus_config.seed)
    state_path = output / "training_state.pt"
    if resume and (output / "model.json").exists() and state_path.exists():
        model, card = load_model(output, device)
    elif options.init_from is not None:
        model, card = load_model(options.init_from, device)
    else:
        model, card = build_model(config).to(device), {}
    if not isinstance(model, EdgeNet):
        raise ValueError("the corpus trains the 'edge' model")
    corpus = Corpus(corpus_config)
    corpus.probe = model.complex_probe().cpu()  # the corpus lights objects with the model's own probe
    validation_config = CorpusConfig(**{**asdict(corpus_config), "seed": corpus_config.seed + VALIDATION_SEED_OFFSET})
    validation = Corpus(validation_config, images=corpus.images)
    validation.probe = corpus.probe
    validation_batch = validation.batch(options.validation_objects)
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.learning_rate, weight_decay=options.weight_decay)
    history: dict = {"step": [], "seconds": [], "train": [], "validation": []}
    step = 0
    if resume and state_path.exists():
        state = torch.load(state_path, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        corpus.generator.set_state(state["corpus_rng"])
        step, history = int(state["step"]), state["history"]
    output.mkdir(parents=True, exist_ok=True)
    model.train()
    running: dict[str, float] = {}
    seen = 0
    started = time.perf_counter() - (history["seconds"][-1] if history["seconds"] else 0.0)
    while step < options.steps:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, options)
        terms = batch_losses(model, corpus.batch(options.objects_per_step), options, device)
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        optimizer.step()
        step += 1
        seen += 1
        for key, value in terms.items():
            running[key] = running.get(key, 0.0) + float(value.detach())
        if step % options.checkpoint_every == 0 or step == options.steps:
            model.eval()
            with torch.inference_mode():
                held_out = {k: float(v) for k, v in batch_losses(model, validation_batch, options, device).items()}
            model.train()
            history["step"].append(step)
            history["seconds"].append(time.perf_counter() - started)
            history["train"].append({k: v / max(seen, 1) for k, v in running.items()})
            history["validation"].append(held_out)
            running, seen = {}, 0
            card = corpus_card(config, corpus_config, options, model, history)
            save_model(output, model, card)
            torch.save({"optimizer": optimizer.state_dict(), "corpus_rng": corpus.generator.get_state(), "step": step,
                        "history": history}, state_path)  # fmt: skip
            if progress:
                progress(step, held_out)
    card = corpus_card(config, corpus_config, options, model, history)
    save_model(output, model, card)
    return card


def corpus_card(
    config: ModelConfig, corpus_config: CorpusConfig, options: CorpusTrainOptions, model: EdgeNet, history: dict
) -> dict:
    """The model card (``model.json``) of a corpus-trained model: what it is, how it was made, what it is for."""
    from edgeray.sim import PtychoSimConfig

    geometry = PtychoSimConfig()
    validation = history["validation"][-1] if history["validation"] else {}
    samples = (history["step"][-1] if history["step"] else 0) * options.objects_per_step
    return {
        "config": asdict(config),
        "parameters": count_parameters(model),
        "input": "sqrt(counts / scale), scale = the scan's mean count per pixel; shape (N, 1, H, W) float32",
        "outputs": "amplitude (relative to the scan's mean transmission, >= 0) and phase (rad, up to a constant) "
        "of the object on the probe-centred grid",
        "conventions": "edgeray.nn.physics",
        "training": {
            "corpus": asdict(corpus_config),
            "options": asdict(options),
            "samples": samples * corpus_config.frames_per_object,
            "hours": (history["seconds"][-1] / 3600) if history["seconds"] else 0.0,
        },
        "valid_for": {
            "frame_size": config.frame_size,
            "probe": config.probe,
            "probe_diameter_px": config.probe_diameter_px or 0.35 * config.frame_size,
            "energy_eV": geometry.energy_eV,
            "distance_m": geometry.distance_m,
            "detector_pixel_m": geometry.detector_pixel_m,
        },
        "validation": validation,
        "history": history,
    }
