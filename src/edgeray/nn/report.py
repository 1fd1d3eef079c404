"""Model cards of the edge model: ``MODEL_CARD.md`` from ``model.json``, with what the model is worth."""

from __future__ import annotations

import json
from pathlib import Path


def _format(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_corpus_card(directory: str | Path, card: dict) -> Path:
    """Write ``MODEL_CARD.md`` for a corpus-trained edge model from its card (``model.json``'s content)."""
    directory = Path(directory)
    config, training = card["config"], card["training"]
    options, corpus = training["options"], training["corpus"]
    validation = card.get("validation") or {}
    lines = [
        f"# EdgeRay edge model (width {config['width']}, depth {config['depth']}, dense {config.get('dense', 0)})",
        "",
        f"- Parameters: {card['parameters']:,}",
        f"- Input: {card['input']}",
        f"- Outputs: {card['outputs']}",
        f"- Trained on the procedural corpus: {training['samples']:,} samples, never repeated "
        f"({options['steps']:,} steps of {options['objects_per_step']} objects x {corpus['frames_per_object']} "
        f"frames), {training['hours']:.1f} h; dose {corpus['photons'][0]:g}-{corpus['photons'][1]:g} photons per "
        f"frame, phase range {corpus['phase_range_rad'][0]:g}-{corpus['phase_range_rad'][1]:g} rad, families "
        f"{', '.join(f'{k} {v:g}' for k, v in corpus['families'].items())}, seed {corpus['seed']}",
        f"- Loss: L1 amplitude + L1 phase (after the best constant) + {options['slope_weight']:g} x slope + "
        f"{options['physics_weight']:g} x Poisson deviance",
        "- Held-out corpus batch (another seed): "
        + ", ".join(f"{k} {_format(v)}" for k, v in validation.items() if k != "total"),
        "",
        "## Valid for",
        "",
        "A network inverts diffraction only for the probe it was trained with (the probe is in its weights):",
        "",
        *[f"- {k}: {v}" for k, v in (card.get("valid_for") or {}).items()],
        "",
    ]
    tuned = card.get("finetuned")
    if tuned:
        regime = tuned.get("regime", "physics")
        learned_from = {"physics": "the frames' own physics (no labels)",
                        "labels": "LSQML labels of the training frames", "both": "LSQML labels plus the physics",
                        "twin": "frames simulated from an LSQML reconstruction of the training frames"}  # fmt: skip
        lines += ["## Fine-tuned on a scan (`edgeray nn finetune`)", "",
                  f"- From: {tuned['from']}; {tuned['scan_frames']:,} frames, {tuned['options']['epochs']} epochs, "
                  f"{tuned['seconds']:.0f} s; probe: {tuned['probe']}",
                  f"- Regime: {regime}, learned from {learned_from.get(regime, regime)}; groups of "
                  f"{tuned['options'].get('group_size', 1)}",
                  f"- Poisson deviance of {tuned['holdout_frames']} held-out frames: "
                  f"{tuned['holdout_deviance_before']:.4g} before, "
                  f"{tuned['holdout_deviance_after']:.4g} after"]  # fmt: skip
        if "kept_epoch" in tuned:
            lines.append(f"- Kept epoch {tuned['kept_epoch']} of {len(tuned['validation_by_epoch']) - 1} (0: the "
                         f"starting model), chosen by the {tuned['validation']}")  # fmt: skip
        lines.append("")
    edge = card.get("learned_at_edge")
    if edge:
        lines += ["## Learned at the edge (`edgeray edge --learn`)", "",
                  f"- Scan {edge['scan_id']}, from {edge['from']}, after {edge['step']} steps on {edge['frames']:,} "
                  f"frames ({'with the live refinement as labels' if edge['labels'] else 'physics only'})",
                  f"- Held-out frames ({edge['holdout_frames']}): deviance {edge['candidate']['deviance']:.4g} "
                  f"against the serving model's {edge['serving']['deviance']:.4g}", ""]  # fmt: skip
    evaluation = card.get("evaluation")
    if evaluation:
        lines += [
            "## Measured on scans it never saw",
            "",
            f"Phase SSIM against the ground truth on the scanned region, 64 x 64 frames, LSQML (its defaults) from "
            f"the true probe ({evaluation.get('date', '')}, `edgeray nn evaluate`):",
            "",
            *evaluation_table(evaluation),
            "",
        ]
        if evaluation.get("median_unseen_nn") is not None:
            lines += [
                f"Median over the unseen object pairs: network {evaluation['median_unseen_nn']:.3f}, LSQML "
                f"{evaluation.get('median_unseen_lsqml') or float('nan'):.3f}. ONNX Runtime: "
                f"{evaluation['frames_per_s']:,.0f} frames/s on {evaluation['threads']} CPU threads (this machine, "
                "at that moment: the figure moves with the host).",
                "",
            ]
    recipe = card.get("recipe")
    if recipe:
        lines += ["## Reproduce", "", "```bash", recipe, "```", ""]
    path = directory / "MODEL_CARD.md"
    path.write_text("\n".join(lines))
    if card.get("history", {}).get("step"):
        curves_figure(card["history"], directory / "loss.png")
    return path


def curves_figure(history: dict, path: str | Path) -> None:
    """``loss.png``: training and held-out phase L1 (rad) and Poisson deviance against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = history["step"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for axis, key, label in ((axes[0], "phase_l1", "phase L1 (rad)"), (axes[1], "physics", "Poisson deviance")):
        for split, style in (("train", "-"), ("validation", "--")):
            values = [entry.get(key, float("nan")) for entry in history.get(split, [])]
            if values:
                axis.plot(steps[: len(values)], values, style, label=split)
        axis.set(xlabel="step", ylabel=label)
        axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def record_evaluation(directory: str | Path, evaluation: dict) -> Path:
    """Put an evaluation (:func:`edgeray.nn.evaluate.evaluate_model`) into a model's ``model.json`` and rewrite its
    ``MODEL_CARD.md``; returns the card's path."""
    directory = Path(directory)
    card_path = directory / "model.json"
    card = json.loads(card_path.read_text())
    card["evaluation"] = evaluation
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    return write_corpus_card(directory, card)


def _three_places(value: float) -> str:
    """``value`` to 3 decimals, without the sign of a value that rounds to zero (no "-0.000")."""
    return f"{value:.3f}".replace("-0.000", "0.000")


def evaluation_table(evaluation: dict) -> list[str]:
    """Markdown rows of :func:`edgeray.nn.evaluate.evaluate_model`'s result."""
    rows = ["| case | network phase SSIM | LSQML phase SSIM |", "| --- | --- | --- |"]
    for case in evaluation.get("cases", []):
        lsqml = case.get("lsqml_phase_ssim")
        shown = "-" if lsqml is None else _three_places(lsqml)
        rows.append(f"| {case['case']} | {_three_places(case['nn_phase_ssim'])} | {shown} |")
    return rows
