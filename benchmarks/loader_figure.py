"""The loader benchmarks as a picture: from the JSON lines of ``benchmarks/loader.py`` (each loader's samples/s on
each layout, with the disk's random and sequential rates as lines) and of ``benchmarks/loader_training.py`` (the
held-out loss against training time, DataLoader and SOLAR, one panel per surrogate and rank count).

    python benchmarks/loader.py > loader.jsonl
    python benchmarks/loader_training.py > training.jsonl
    python benchmarks/loader_figure.py loader.jsonl training.jsonl -o docs/img/loader.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLOURS = {"torch": "tab:grey", "lru": "tab:blue", "frequency": "tab:green", "solar": "tab:red"}
NAMES = {"torch": "DataLoader", "lru": "LRU", "frequency": "frequency (NoPFS)", "solar": "SOLAR",
         "memory": "set in memory (floor)"}  # fmt: skip
CURVE_COLOURS = {**COLOURS, "memory": "black"}


def read_lines(paths: list[Path]) -> list[dict]:
    records = []
    for path in paths:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise SystemExit(f"{path}:{number}: not a JSON line ({error})") from None
    return records


def throughput_panels(records: list[dict], axes_row) -> None:
    """One panel per rank count: samples/s of each loader on each layout; the disk's rates in samples/s."""
    head = next(r for r in records if r.get("benchmark") == "loader")
    sequential = next(r["disk_sequential_bytes_per_s"] for r in records if "disk_sequential_bytes_per_s" in r)
    random = next((r["disk_random_bytes_per_s"] for r in records if "disk_random_bytes_per_s" in r), None)
    runs = [r for r in records if "loader" in r and "samples_per_s" in r]
    layouts = list(dict.fromkeys(r["layout"] for r in runs))
    for axes, ranks in zip(axes_row, sorted({r["ranks"] for r in runs}), strict=False):
        for k, kind in enumerate(COLOURS):
            for j, layout in enumerate(layouts):
                key = (kind, layout, ranks)
                rates = [r["samples_per_s"] for r in runs if (r["loader"], r["layout"], r["ranks"]) == key]
                if rates:
                    label = NAMES[kind] if j == 0 else None
                    axes.bar(j + (k - 1.5) * 0.2, max(rates), 0.2, color=COLOURS[kind], label=label)
        axes.axhline(sequential / head["sample_bytes"], color="black", ls="--", lw=1, label="disk, sequential")
        if random:
            axes.axhline(random / head["sample_bytes"], color="black", ls=":", lw=1, label="disk, random samples")
        axes.set_xticks(range(len(layouts)), [layout.replace(", ", ",\n") for layout in layouts], fontsize=8)
        axes.set_yscale("log")
        axes.set_ylabel("samples / s (all ranks, log scale)")
        axes.set_title(f"{ranks} ranks, page cache kept out")
        axes.legend(fontsize=7)


def training_panels(records: list[dict], axes_row) -> None:
    """One panel per surrogate and rank count: held-out loss against seconds of training."""
    runs = [r for r in records if "curve" in r]
    cases = list(dict.fromkeys((r["model"], r["ranks"]) for r in runs))
    for axes, (model, ranks) in zip(axes_row, cases, strict=False):
        for run in (r for r in runs if (r["model"], r["ranks"]) == (model, ranks)):
            _, seconds, loss = zip(*run["curve"], strict=True)
            dashes = "--" if run["loader"] == "memory" else "-"
            axes.plot(seconds, loss, dashes, color=CURVE_COLOURS[run["loader"]], label=NAMES[run["loader"]])
        summary = next((r for r in records if (r.get("model"), r.get("ranks")) == (model, ranks)
                        and "target_val_loss" in r), None)  # fmt: skip
        if summary:
            axes.axhline(summary["target_val_loss"], color="black", ls=":", lw=1, label="target")
            axes.set_title(f"{model}, {ranks} ranks: SOLAR {summary['solar_over_torch']:.2f}x the time")
        axes.set_xlabel("training seconds (evaluation excluded)")
        axes.set_ylabel("held-out loss")
        axes.legend(fontsize=7)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("jsonl", type=Path, nargs="+", help="JSON lines of loader.py and/or loader_training.py")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args()
    records = read_lines(args.jsonl)
    has_throughput = any(r.get("benchmark") == "loader" for r in records)
    training_cases = len({(r["model"], r["ranks"]) for r in records if "curve" in r})
    rows = int(has_throughput) + -(-training_cases // 3)
    if rows == 0:
        raise SystemExit("no loader.py or loader_training.py records in " + ", ".join(map(str, args.jsonl)))
    figure, axes = plt.subplots(rows, 3, figsize=(15, 4.2 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.set_visible(False)
    row = 0
    if has_throughput:
        ranks = len({r["ranks"] for r in records if "samples_per_s" in r})
        for ax in axes[0, :ranks]:
            ax.set_visible(True)
        throughput_panels(records, axes[0, :ranks])
        row = 1
    visible = axes[row:].ravel()[:training_cases]
    for ax in visible:
        ax.set_visible(True)
    training_panels(records, visible)
    figure.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.output, dpi=110)
    print(json.dumps({"figure": str(args.output), "panels": int(has_throughput) * ranks + training_cases}))


if __name__ == "__main__":
    main()
