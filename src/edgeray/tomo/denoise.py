"""TomoGAN in practice: training pairs, training, model directories, and denoising whole volumes.

Pairs file (HDF5): ``/noisy`` and ``/clean`` ``(N, H, W)`` float32 slices (``clean`` of the same object from full
data: all angles, full dose), ``/truth`` ``(N, H, W)`` when known (simulations), attributes saying how they were
made. A model directory holds ``model.safetensors``, ``model.json`` (``config`` with ``family: tomogan``, the
normalization, the training record) and ``MODEL_CARD.md``, as the ptychography surrogates do.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.nn import functional as F

from edgeray.device import resolve_device
from edgeray.tomo.tomogan import (
    PatchDiscriminator,
    TomoGANConfig,
    UNet,
    config_dict,
    freeze,
    normalize_slices,
    perceptual_loss,
    stack_neighbours,
    train_feature_net,
    vgg19_features,
)

SHIPPED_DENOISER = Path(__file__).parent / "shipped" / "tomogan"  # low-dose slices
SHIPPED_STREAM_DENOISER = Path(__file__).parent / "shipped" / "tomogan-stream"  # early, sparse stream slices
SHIPPED_GENERAL_DENOISER = Path(__file__).parent / "shipped" / "tomogan-general"  # many families, codes, doses


# ---------------------------------------------------------------------------------------------------- pairs
def reconstruct_scan(scan, theta_stride: int = 1) -> np.ndarray:
    """A :class:`~edgeray.io.TomoScan`'s slices ``(rows, cols, cols)`` by gridrec, every ``theta_stride``-th angle."""
    from edgeray.tomo.fbp import gridrec
    from edgeray.tomo.preprocess import minus_log, normalize

    line_integrals = minus_log(normalize(scan.projections[::theta_stride], scan.flats, scan.darks))
    return gridrec(np.swapaxes(line_integrals, 0, 1), np.radians(scan.theta_deg[::theta_stride]))


def simulated_pairs(
    n_volumes: int = 4,
    size: int = 128,
    slices: int = 8,
    angles: int = 360,
    low_photons: float = 60,
    sparse_stride: int = 1,
    target: str = "truth",
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Low-dose (``low_photons`` per pixel, every ``sparse_stride``-th angle) gridrec slices of random phantoms
    (foam and Shepp-Logan, alternating) vs. ``target``: ``truth`` (the phantom) or ``full`` (gridrec of full data:
    1e5 photons, all angles; what an experiment can give, and what caps SSIM against the truth at about 0.7)."""
    if target not in ("truth", "full"):
        raise ValueError(f"target must be 'truth' or 'full', not {target!r}")
    from edgeray.sim import TomoSimConfig, simulate_tomo

    noisy, clean, truth = [], [], []
    for k in range(n_volumes):
        phantom = "foam" if k % 2 == 0 else "shepp"
        common = {"phantom": phantom, "size": size, "slices": slices, "angles": angles, "seed": seed + k}
        low = simulate_tomo(TomoSimConfig(photons=low_photons, **common))
        full = simulate_tomo(TomoSimConfig(photons=1e5, **common))  # its truth is the same phantom
        noisy.append(reconstruct_scan(low, sparse_stride))
        clean.append(full.ground_truth if target == "truth" else reconstruct_scan(full))
        truth.append(full.ground_truth)
        if progress:
            progress(1)
    attrs = {"source": "simulation", "block": slices, "low_photons": low_photons, "sparse_stride": sparse_stride,
             "angles": angles,
             "size": size, "volumes": n_volumes, "target": target, "seed": seed}  # fmt: skip
    return {"noisy": np.concatenate(noisy), "clean": np.concatenate(clean), "truth": np.concatenate(truth),
            "attrs": attrs}  # fmt: skip


def stream_pairs(
    n_volumes: int = 8,
    size: int = 128,
    slices: int = 8,
    angles: int = 180,
    photons: float = 1e4,
    fractions: tuple[float, ...] = (0.08, 0.12, 0.16, 0.2, 0.25, 0.32, 0.4, 0.5),
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """What a streaming reconstruction shows early on vs. the truth: random phantoms scanned over ``angles``
    projections in golden-angle order; inputs are the stream's slices (:class:`~edgeray.tomo.streaming.
    StreamingSlices`) after each of ``fractions`` of the projections has arrived."""
    from edgeray.sim import TomoSimConfig, simulate_tomo
    from edgeray.tomo.preprocess import minus_log, normalize
    from edgeray.tomo.streaming import StreamingSlices, acquisition_order

    noisy, truth = [], []
    stops = sorted({max(1, round(f * angles)) for f in fractions})
    for k in range(n_volumes):
        phantom = "foam" if k % 2 == 0 else "shepp"
        scan = simulate_tomo(TomoSimConfig(phantom=phantom, size=size, slices=slices, angles=angles, photons=photons,
                                           seed=seed + k))  # fmt: skip
        line_integrals = minus_log(normalize(scan.projections, scan.flats, scan.darks))
        order = acquisition_order(scan.theta_deg, "golden")
        stream = StreamingSlices(slices, size, angles, update_every=angles + 1)
        for received, which in enumerate(order, start=1):
            stream.add(line_integrals[which], scan.theta_deg[which], int(which))
            if received in stops:
                stream.update()
                noisy.append(stream.slices.copy())
                truth.append(scan.ground_truth)
        if progress:
            progress(1)
    attrs = {"source": "simulated stream", "block": slices, "angles": angles, "photons": photons,
             "fractions": list(fractions),
             "size": size, "volumes": n_volumes, "target": "truth", "seed": seed}  # fmt: skip
    truth_all = np.concatenate(truth)
    return {"noisy": np.concatenate(noisy), "clean": truth_all, "truth": truth_all, "attrs": attrs}


def tooth_pairs(path: str | Path, stride: int = 8, rows: slice | None = None, center: float | None = None) -> dict:
    """Tooth-style Data Exchange file: slices from every ``stride``-th angle vs. from all angles (gridrec)."""
    from edgeray.io import read_dxchange
    from edgeray.tomo.fbp import gridrec
    from edgeray.tomo.preprocess import minus_log, normalize

    scan = read_dxchange(path)
    data = scan.projections if rows is None else scan.projections[:, rows]
    flats = None if scan.flats is None else (scan.flats if rows is None else scan.flats[:, rows])
    darks = None if scan.darks is None else (scan.darks if rows is None else scan.darks[:, rows])
    sinograms = np.swapaxes(minus_log(normalize(data, flats, darks)), 0, 1)
    theta = np.radians(scan.theta_deg)
    full = gridrec(sinograms, theta, center)
    sparse = gridrec(sinograms[:, ::stride], theta[::stride], center)
    attrs = {"source": Path(path).name, "source_sha256": _sha256(path), "stride": stride, "center": center}
    return {"noisy": sparse, "clean": full, "attrs": attrs}


def write_pairs(path: str | Path, pairs: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as h5:
        for key in ("noisy", "clean", "truth"):
            if pairs.get(key) is not None:
                h5.create_dataset(key, data=np.asarray(pairs[key], dtype=np.float32), chunks=True)
        for key, value in pairs.get("attrs", {}).items():
            h5.attrs[key] = value if value is not None else "none"
    return path


def read_pairs(path: str | Path) -> dict:
    """Read a pairs file; raises ValueError naming the file and dataset at fault."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such pairs file")
    with h5py.File(path, "r") as h5:
        for key in ("noisy", "clean"):
            if key not in h5:
                raise ValueError(f"{path}: no /{key} dataset (a denoiser pairs file has /noisy and /clean)")
        pairs = {key: h5[key][()] for key in ("noisy", "clean", "truth") if key in h5}
        pairs["attrs"] = dict(h5.attrs)
    if pairs["noisy"].shape != pairs["clean"].shape or pairs["noisy"].ndim != 3:
        shapes = f"/noisy {pairs['noisy'].shape} and /clean {pairs['clean'].shape}"
        raise ValueError(f"{path}: {shapes} must be equal (N, H, W)")
    return pairs


# ---------------------------------------------------------------------------------------------------- training
@dataclass
class DenoiserOptions:
    """Training settings.

    Attributes:
        steps: generator updates; batch_size, patch: random square patches per step and their side, pixels.
        learning_rate: Adam's, generator and discriminator.
        mse_weight, adversarial_weight, perceptual_weight: the loss terms' weights (0 turns a term off).
        pixel_loss: the pixel term, ``mse`` (TomoGAN's) or ``l1`` (keeps edges sharper; measured better SSIM).
        features: perceptual feature network: ``own`` (trained here on the clean slices), a path to VGG19 weights
            (torchvision layout), or ``none``.
        holdout: fraction of slices (the last ones) kept out of training for the validation figure.
        device: ``cpu`` or ``cuda`` (``auto``: CUDA when there is one); float32 on both (TF32 convolutions on
            CUDA where the GPU has them).
    """

    steps: int = 3000
    batch_size: int = 8
    patch: int = 64
    learning_rate: float = 1e-3
    mse_weight: float = 1.0
    adversarial_weight: float = 1e-3
    perceptual_weight: float = 0.1
    pixel_loss: str = "mse"
    features: str = "own"
    holdout: float = 0.25
    seed: int = 0
    device: str = "auto"


def _feature_net(options: DenoiserOptions, clean: np.ndarray):
    if options.perceptual_weight == 0 or options.features == "none":
        return None
    if options.features == "own":
        height, width = clean.shape[-2:]
        side = min(64, (min(height, width) // 4) * 4)
        top, left = (height - side) // 2, (width - side) // 2  # the middle: the object, not the empty margin
        return train_feature_net(clean[:, top : top + side, left : left + side], steps=150, seed=options.seed)
    return vgg19_features(options.features)


def _patches(noisy: torch.Tensor, clean: torch.Tensor, size: int, count: int, generator: torch.Generator):
    """``count`` random ``size``-pixel patches of random slices: inputs ``(count, C, s, s)``, targets
    ``(count, 1, s, s)``."""
    n, _, height, width = noisy.shape
    size = min(size, height, width)
    index = torch.randint(n, (count,), generator=generator).to(noisy.device)
    top = torch.randint(height - size + 1, (count,), generator=generator).to(noisy.device)
    left = torch.randint(width - size + 1, (count,), generator=generator).to(noisy.device)
    rows = top[:, None] + torch.arange(size, device=noisy.device)[None, :]
    cols = left[:, None] + torch.arange(size, device=noisy.device)[None, :]
    inputs = noisy[index[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    targets = clean[index[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    return inputs.contiguous(), targets.contiguous()


def normalized_pairs(noisy: np.ndarray, clean: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Slice pairs ``(N, H, W)`` as training sees them, float32: each volume of ``block`` slices mapped by one affine
    map, its noisy slices' 0.5/99.5 percentiles -> 0/1, applied to both (as :func:`denoise_volume` normalizes)."""
    noisy_out, clean_out = np.empty_like(noisy, np.float32), np.empty_like(clean, np.float32)
    for first in range(0, len(noisy), block):
        part = slice(first, first + block)
        noisy_out[part], low, high = normalize_slices(noisy[part])
        clean_out[part] = (clean[part] - low) / (high - low)
    return noisy_out, clean_out


def stacked_volumes(slices: np.ndarray, block: int, in_slices: int) -> np.ndarray:
    """``(N, H, W)`` -> ``(N, in_slices, H, W)``: each slice with its neighbours, never across a volume of ``block``."""
    return np.concatenate([stack_neighbours(slices[i : i + block], in_slices) for i in range(0, len(slices), block)])


def train_denoiser(
    pairs_path: str | Path,
    out_dir: str | Path,
    config: TomoGANConfig | None = None,
    options: DenoiserOptions | None = None,
    progress: Callable[[int], None] | None = None,
    start_from: UNet | None = None,
) -> dict:
    """Train a TomoGAN generator on a pairs file -> model directory ``out_dir``; returns the model card.

    Each volume (``block`` slices) of a pair is normalized by one affine map, its noisy slices' 0.5/99.5
    percentiles -> 0/1 (FBP is unbiased, so both are on one scale), exactly as :func:`denoise_volume` normalizes
    what it is given: the model works on any input scale and its output maps back to it. ``block`` 1 makes a
    model that normalizes each slice on its own (``normalization_scope`` ``slice`` in its card): a slice then
    denoises the same alone or in a volume. ``start_from``: weights to begin with (its architecture is used).
    """
    config = start_from.config if start_from is not None else (config or TomoGANConfig())
    options = options or DenoiserOptions()
    device = resolve_device(options.device)
    pairs = read_pairs(pairs_path)
    start = time.perf_counter()
    torch.manual_seed(options.seed)
    generator = torch.Generator().manual_seed(options.seed)
    block = int(pairs["attrs"].get("block", len(pairs["noisy"])))  # slices of one volume, normalized together
    noisy, clean = normalized_pairs(pairs["noisy"], pairs["clean"], block)
    n_train = max(1, round(len(noisy) * (1 - options.holdout)))
    stacked = torch.from_numpy(stacked_volumes(noisy, block, config.in_slices)).to(device)
    targets = torch.from_numpy(clean[:, None]).to(device)
    features = _feature_net(options, clean[:n_train])
    if features is not None:
        features = features.to(device)
    model, critic = UNet(config), PatchDiscriminator().to(device)
    if start_from is not None:
        model.load_state_dict(start_from.state_dict())
    model = model.to(device)
    g_opt = torch.optim.Adam(model.parameters(), lr=options.learning_rate)
    d_opt = torch.optim.Adam(critic.parameters(), lr=options.learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(g_opt, options.steps, eta_min=options.learning_rate / 20)
    history: dict[str, list[float]] = {"step": [], "loss": [], "mse": [], "val_mse": []}
    for step in range(1, options.steps + 1):
        inputs, wanted = _patches(stacked[:n_train], targets[:n_train], options.patch, options.batch_size, generator)
        output = model(inputs)
        pixel = F.l1_loss(output, wanted) if options.pixel_loss == "l1" else F.mse_loss(output, wanted)
        loss = options.mse_weight * pixel
        mse = float(F.mse_loss(output.detach(), wanted))
        if features is not None:
            loss = loss + options.perceptual_weight * perceptual_loss(features, output, wanted)
        if options.adversarial_weight > 0:
            logits = critic(output)
            adversarial = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
            loss = loss + options.adversarial_weight * adversarial
        g_opt.zero_grad()
        loss.backward()
        g_opt.step()
        schedule.step()
        if options.adversarial_weight > 0:  # the critic learns to tell full-data patches from generated ones
            real, fake = critic(wanted), critic(output.detach())
            d_loss = F.binary_cross_entropy_with_logits(real, torch.ones_like(real)) + \
                F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))  # fmt: skip
            d_opt.zero_grad()
            d_loss.backward()
            d_opt.step()
        if step % 50 == 0 or step == options.steps:
            history["step"].append(step)
            history["loss"].append(float(loss.detach()))
            history["mse"].append(mse)
            history["val_mse"].append(_validation_mse(model, stacked[n_train:], targets[n_train:]))
        if progress:
            progress(1)
    card = {
        "config": config_dict(config),
        "normalization": f"percentiles 0.5/99.5 of the input {'slice' if block == 1 else 'volume'} -> 0/1; output in "
        "the clean scale, mapped back",
        "normalization_scope": "slice" if block == 1 else "volume",
        "training": {**asdict(options), "pairs": Path(pairs_path).name, "pairs_sha256": _sha256(pairs_path),
                     "pairs_attrs": _plain(pairs["attrs"]),
                     "slices_train": n_train, "slices_held_out": len(noisy) - n_train,
                     "seconds": time.perf_counter() - start},
        "history": history,
        "parameters": sum(p.numel() for p in model.parameters()),
    }  # fmt: skip
    card["training"]["device"] = str(device)
    card["training"]["start_from"] = getattr(start_from, "name", None) if start_from is not None else None
    save_denoiser(out_dir, model.cpu(), card)
    return card


def _validation_mse(model: UNet, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    if len(inputs) == 0:
        return float("nan")
    model.eval()
    with torch.inference_mode():
        value = float(F.mse_loss(model(inputs[:8]), targets[:8]))
    model.train()
    return value


def _sha256(path: str | Path) -> str:
    """SHA-256 of a file, read in 16 MiB blocks: a card names its data by name and checksum, never by folder."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(16 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _plain(attrs: dict) -> dict:
    return {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in attrs.items()}


# ---------------------------------------------------------------------------------------------------- model files
def save_denoiser(directory: str | Path, model: UNet, card: dict) -> Path:
    """Weights (safetensors), ``model.json`` and a ``MODEL_CARD.md`` for people."""
    from edgeray.nn.checkpoint import save_model

    directory = save_model(directory, model, card)
    history = card.get("history", {})
    lines = [
        "# TomoGAN denoiser", "",
        f"U-Net generator: depth {card['config']['depth']}, width {card['config']['width']}, "
        f"{card['config']['in_slices']} input slice(s), {card.get('parameters', '?'):,} parameters.", "",
        "Input: reconstructed slices `(slices, Y, X)` of any intensity scale (normalized by the volume's 0.5/99.5 "
        "percentiles). Output: the same slices denoised, on the input's scale.", "",
        f"Trained on `{card['training']['pairs']}` ({card['training']['slices_train']} slices, "
        f"{card['training']['slices_held_out']} held out) for {card['training']['steps']} steps "
        f"in {card['training']['seconds']:.0f} s.",
    ]  # fmt: skip
    if history.get("val_mse"):
        lines.append(f"Held-out MSE (normalized) at the end: {history['val_mse'][-1]:.4g}.")
    if card.get("self_supervised"):
        told = card["self_supervised"]
        lines += ["", f"Self-supervised (Noise2Inverse, {told['strategy']}) on {told['splits']} disjoint angle "
                  f"subsets of `{told['scan']}`; no clean target."]  # fmt: skip
        if told["strategy"] == "1:X":
            lines.append(
                f"It enhances reconstructions from 1/{told['splits']} of the angles: the output is "
                f"{1 - 1 / told['splits']:.3g} of the network's plus {1 / told['splits']:.3g} of the input."
            )
    (Path(directory) / "MODEL_CARD.md").write_text("\n".join(lines) + "\n")
    if history.get("step"):
        _loss_figure(history, Path(directory) / "loss.png")
    return Path(directory)


def _loss_figure(history: dict, path: Path) -> None:
    """Training loss and held-out MSE against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.semilogy(history["step"], history["loss"], label="training loss (all terms)")
    ax.semilogy(history["step"], history["val_mse"], label="held-out MSE")
    ax.set_xlabel("step")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


SHIPPED_BY_NAME = {"low-dose": SHIPPED_DENOISER, "general": SHIPPED_GENERAL_DENOISER, "stream": SHIPPED_STREAM_DENOISER}


def denoiser_directory(directory: str | Path | None = None) -> Path:
    """A denoiser directory, or a shipped model's name (``general``, the default: it transfers to families and doses
    it was not trained on, benchmarks/denoise_vs_bm3d.py; ``low-dose``; ``stream``)."""
    return Path(SHIPPED_BY_NAME.get(str(directory), directory)) if directory is not None else SHIPPED_GENERAL_DENOISER


def load_denoiser(directory: str | Path | None = None) -> tuple[UNet, dict]:
    """A denoiser (:func:`denoiser_directory`) -> ``(generator in eval mode, card)``; ValueError names the file at
    fault."""
    from edgeray.nn.checkpoint import fit_weights, read_model_files

    directory = denoiser_directory(directory)
    card, weights = read_model_files(directory, "denoiser")
    settings = dict(card["config"])
    if settings.pop("family", None) != "tomogan":
        raise ValueError(f"{directory / 'model.json'}: not a TomoGAN model (family {card['config'].get('family')!r})")
    try:
        config = TomoGANConfig(**settings)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{directory / 'model.json'}: unreadable model card ({exc})") from exc
    model = freeze(fit_weights(UNet(config), weights, directory, "TomoGAN"))
    model.name = directory.name  # provenance of what is fine-tuned from it: a name, not a folder
    model.normalization_scope = card.get("normalization_scope", "volume")
    return model, card


def denoise_volume(volume: np.ndarray, model: UNet, batch: int = 4, progress: Callable[[int], None] | None = None):
    """Denoise slices ``(S, H, W)`` (any scale) -> ``(S, H, W)`` float32 on the input's scale, on the model's
    device."""
    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim == 2:
        volume = volume[None]
    if volume.ndim != 3:
        raise ValueError(f"slices must be (slices, Y, X), not shape {volume.shape}")
    if getattr(model, "normalization_scope", "volume") == "slice":  # each slice on its own: alone = in a volume
        scaled = [normalize_slices(one) for one in volume]
        normalized = np.stack([s[0] for s in scaled])
        low = np.array([s[1] for s in scaled], dtype=np.float32)[:, None, None]
        high = np.array([s[2] for s in scaled], dtype=np.float32)[:, None, None]
    else:
        normalized, low, high = normalize_slices(volume)
    stacked = torch.from_numpy(stack_neighbours(normalized, model.config.in_slices))
    device = next(model.parameters()).device
    out = np.empty_like(normalized)
    with torch.inference_mode():
        for first in range(0, len(stacked), batch):
            out[first : first + batch] = model(stacked[first : first + batch].to(device))[:, 0].cpu().numpy()
            if progress:
                progress(min(batch, len(stacked) - first))
    return out * (high - low) + low
