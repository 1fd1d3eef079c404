"""What each policy would load at a scale that cannot run here: plans only, no data.

For a training set of ``samples`` samples of ``sample_bytes``, ``epochs`` epochs, ``ranks`` ranks with
``buffer_fraction`` of the data set buffered across all ranks: per policy, the storage reads, the hit rate, the
bytes read and the hit rate Belady's optimal policy reaches on the same access sequences. The baseline is the
PyTorch DataLoader on its best layout: no buffer, one sample per chunk, so every access reads exactly one sample
(``dataloader``); every record says how many times fewer bytes it reads (``bytes_vs_dataloader``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeray.loader.plan import POLICIES, belady_hits, make_plans
from edgeray.loader.schedule import Schedule


def simulate_policies(
    samples: int,
    epochs: int,
    ranks: int,
    batch_per_rank: int = 32,
    buffer_fraction: float = 0.25,
    sample_bytes: int = 49156,
    seed: int = 0,
    policies: tuple[str, ...] = POLICIES,
    rows_per_chunk: int = 1,
) -> list[dict]:
    """One record per policy: ``reads``, ``hits``, ``hit_rate``, ``belady_hit_rate``, ``chunk_reads``,
    ``bytes_read`` (whole chunks when ``rows_per_chunk > 1``: what HDF5 reads), ``max_share``/``min_share``."""
    capacity = int(buffer_fraction * samples / ranks)
    records = []
    for policy in policies:
        schedule = Schedule(samples, epochs, batch_per_rank * ranks, seed)
        plans = make_plans(schedule, ranks, capacity, policy, seed=seed, rows_per_chunk=rows_per_chunk)
        accesses = sum(len(step[0]) for plan in plans for step in plan.steps)
        hits = sum(plan.hits for plan in plans)
        optimal = sum(belady_hits(plan, capacity, samples) for plan in plans)
        shares = np.array([len(step[0]) for plan in plans for step in plan.steps])
        chunk_reads = sum(plan.chunk_reads for plan in plans)
        records.append({
            "policy": policy, "samples": samples, "epochs": epochs, "ranks": ranks,
            "buffer_samples_per_rank": capacity, "accesses": accesses, "hits": hits, "reads": accesses - hits,
            "hit_rate": hits / accesses, "belady_hit_rate": optimal / accesses,
            "chunk_reads": chunk_reads, "rows_per_chunk": rows_per_chunk,
            "bytes_read": chunk_reads * rows_per_chunk * sample_bytes,
            "max_share": int(shares.max()), "min_share": int(shares.min()),
        })  # fmt: skip
    accesses = records[0]["accesses"]
    even = next((r for r in records if r["policy"] != "solar"),
                {"max_share": batch_per_rank, "min_share": None, "belady_hit_rate": None})  # fmt: skip
    baseline = {
        "policy": "dataloader", "samples": samples, "epochs": epochs, "ranks": ranks, "buffer_samples_per_rank": 0,
        "accesses": accesses, "hits": 0, "reads": accesses, "hit_rate": 0.0,
        "belady_hit_rate": even["belady_hit_rate"], "chunk_reads": accesses, "rows_per_chunk": 1,
        "bytes_read": accesses * sample_bytes, "max_share": even["max_share"], "min_share": even["min_share"],
    }  # fmt: skip
    records.insert(0, baseline)
    for record in records:
        record["bytes_vs_dataloader"] = baseline["bytes_read"] / max(record["bytes_read"], 1)
    return records


def policies_figure(records: list[dict], path: str | Path) -> Path:
    """Bar chart of bytes read (as a share of the best-layout DataLoader's) and hit rates, per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["policy"] for r in records]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    axes[0].bar(names, [1 / r["bytes_vs_dataloader"] for r in records], color="tab:red")
    axes[0].set_ylabel("bytes read / DataLoader's (1 per chunk)")
    axes[1].bar(names, [r["hit_rate"] for r in records], color="tab:blue", label="policy")
    axes[1].scatter(names, [r["belady_hit_rate"] for r in records], color="black", zorder=3,
                    label="Belady, sample by sample, same accesses")  # fmt: skip
    axes[1].set_ylabel("buffer hit rate")
    axes[1].legend(fontsize=8)
    r = next(r for r in records if r["policy"] != "dataloader")
    fig.suptitle(f"{r['samples']:,} samples, {r['epochs']} epochs, {r['ranks']} ranks, "
                 f"{r['buffer_samples_per_rank']:,} buffered per rank, {r['rows_per_chunk']} per chunk",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
