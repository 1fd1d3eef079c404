"""SOLAR loader: schedule invariants, plans, buffer bound, data identity, determinism, bad files, DDP gradients."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from edgeray.loader import Schedule, SolarLoader, TrainsetReader, belady_hits, make_plans
from edgeray.loader.direct import DirectRows
from edgeray.nn.trainset import write_interleaved, write_trainset

FRAME = (8, 8)
SAMPLE_BYTES = 8 * 8 * (2 + 8) + 4  # uint16 counts, float32 amplitude and phase, float32 scale


def make_samples(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "frames": rng.integers(0, 1000, (n, *FRAME)).astype(np.float32),
        "amplitude": rng.random((n, *FRAME)).astype(np.float32),
        "phase": rng.uniform(-3, 3, (n, *FRAME)).astype(np.float32),
        "scale": rng.uniform(1, 2, n).astype(np.float32),
    }


def make_set(path, n: int, seed: int = 0, rows_per_chunk: int | None = None):
    return write_trainset(path, [make_samples(n, seed)], {"source": "test"}, rows_per_chunk=rows_per_chunk)


@pytest.mark.parametrize("policy", ["solar", "lru", "frequency", "none"])
@pytest.mark.parametrize("n_samples, batch, ranks", [(1000, 64, 2), (997, 50, 3), (203, 64, 4)])
def test_every_epoch_visits_every_sample_once_in_the_reference_batches(policy, n_samples, batch, ranks):
    schedule = Schedule(n_samples, 4, batch, seed=7)
    reference = [[set(schedule.batch(e, b).tolist()) for b in range(schedule.batches_per_epoch)] for e in range(4)]
    plans = make_plans(schedule, ranks, capacity=120, policy=policy)
    seen = {e: [] for e in range(4)}
    for t, (epoch, b) in enumerate(schedule.steps()):
        union = np.concatenate([plan.steps[t][0] for plan in plans])
        assert len(union) == len(set(union.tolist()))  # no sample twice in a global batch
        assert set(union.tolist()) == reference[epoch][b]  # the batch a standard shuffled loader makes
        seen[epoch].append(union)
    for epoch in range(4):
        assert np.array_equal(np.sort(np.concatenate(seen[epoch])), np.arange(n_samples))
    assert sorted(schedule.epoch_order) == list(range(4))


def test_solar_keeps_shares_balanced_and_beats_the_other_policies():
    schedule_args = (6000, 6, 256)
    rates = {}
    for policy in ("solar", "lru", "frequency", "none"):
        plans = make_plans(Schedule(*schedule_args, seed=1), 4, capacity=700, policy=policy)
        accesses = sum(len(step[0]) for plan in plans for step in plan.steps)
        rates[policy] = sum(plan.hits for plan in plans) / accesses
        if policy == "solar":
            shares = np.array([[len(plan.steps[t][0]) for plan in plans] for t in range(len(plans[0].steps))])
            shares = shares[shares.sum(axis=1) == 256]  # full global batches (each epoch ends with a smaller one)
            assert shares.max() <= 64 + 8 and shares.min() >= 64 - 8  # default bound: 1/8 of the even share
            optimal = sum(belady_hits(plan, 700, 6000) for plan in plans) / accesses
            assert rates["solar"] >= optimal - 0.05  # within 5 % of Belady on its own accesses
    assert rates["solar"] > rates["frequency"] > rates["lru"] >= rates["none"] == 0


def test_loader_gives_the_file_s_data_and_respects_the_buffer(tmp_path):
    path = make_set(tmp_path / "set.h5", 500)
    with h5py.File(path) as h5:
        frames, amplitude, phase, scale = (h5[k][()] for k in ("frames", "amplitude", "phase", "scale"))
    for rank in range(2):
        loader = SolarLoader(path, 40, 3, seed=3, rank=rank, world_size=2, buffer_bytes=100 * SAMPLE_BYTES)
        assert loader.capacity == 100
        steps = 0
        for batch in loader:
            ids = batch.samples
            np.testing.assert_array_equal(batch.amplitude[:, 0].numpy(), amplitude[ids])
            np.testing.assert_array_equal(batch.phase[:, 0].numpy(), phase[ids])
            expected = np.sqrt(np.maximum(frames[ids], 0) / scale[ids, None, None])
            np.testing.assert_allclose(batch.inputs[:, 0].numpy(), expected, rtol=1e-6)
            steps += 1
        assert steps == len(loader) == 3 * 13
        assert loader.stats["peak_buffered"] <= 100
        assert loader.stats["hits"] + loader.stats["reads"] == sum(len(s[0]) for s in loader.plan.steps)
        assert loader.stats["hits"] > 0


def test_chunk_aware_solar_reads_far_fewer_chunks():
    reads = {}
    for policy in ("solar", "lru"):
        plans = make_plans(Schedule(8192, 3, 128, seed=0), 2, 1024, policy, rows_per_chunk=64)
        accesses = sum(len(step[0]) for plan in plans for step in plan.steps)
        reads[policy] = sum(plan.chunk_reads for plan in plans) / accesses
        assert max(plan.peak_buffered for plan in plans) <= 1024
    assert reads["solar"] < reads["lru"] / 5  # measured ~16x fewer chunk reads per sample


def test_plans_are_deterministic_by_seed():
    first = make_plans(Schedule(800, 3, 64, seed=5), 2, 100)
    again = make_plans(Schedule(800, 3, 64, seed=5), 2, 100)
    other = make_plans(Schedule(800, 3, 64, seed=6), 2, 100)
    flat = [np.concatenate([s[0] for s in p.steps]) for p in (first[0], again[0], other[0])]
    assert np.array_equal(flat[0], flat[1]) and not np.array_equal(flat[0], flat[2])


def test_coalesced_reads_are_fewer_than_samples(tmp_path):
    path = make_set(tmp_path / "set.h5", 2000)
    reader = TrainsetReader(path)
    ids = np.random.default_rng(0).choice(2000, 300, replace=False)
    data = reader.read(ids)
    with h5py.File(path) as h5:
        np.testing.assert_array_equal(data["phase"], h5["phase"][()][ids])
    assert reader.read_calls < 300 / 4
    reader.close()


@pytest.mark.parametrize("rows_per_chunk", [1, 16])
def test_simulated_policies_are_judged_against_the_best_layout_dataloader(rows_per_chunk):
    from edgeray.loader.simulate import simulate_policies

    records = {r["policy"]: r for r in simulate_policies(3000, 3, 4, 16, 0.25, 1000, rows_per_chunk=rows_per_chunk)}
    baseline = records["dataloader"]
    assert baseline["bytes_read"] == baseline["accesses"] * 1000 and baseline["rows_per_chunk"] == 1
    solar = records["solar"]
    if rows_per_chunk == 1:  # sample by sample, the only saving is the buffer's hits
        assert solar["bytes_vs_dataloader"] == pytest.approx(1 / (1 - solar["hit_rate"]))
    else:  # whole chunks cost bytes the one-sample layout never reads
        assert records["none"]["bytes_vs_dataloader"] < 1 / 4


def write_layout(path, samples: dict, layout: str):
    """The same samples as: ``chunks-N`` (N per chunk), ``contiguous``, ``gzip`` (compressed: h5py reads it)."""
    with h5py.File(path, "w") as h5:
        for key in ("frames", "amplitude", "phase"):
            data = samples[key].astype(np.uint16) if key == "frames" else samples[key]
            if layout == "contiguous":
                h5[key] = data
            elif layout == "gzip":
                h5.create_dataset(key, data=data, chunks=(16, *FRAME), compression="gzip")
            elif layout.startswith("interleaved"):
                continue
            else:
                h5.create_dataset(key, data=data, chunks=(int(layout.split("-")[1]), *FRAME))
        if layout.startswith("interleaved"):
            rows = int(layout.split("-")[1])
            chunked = {key: h5.create_dataset(key, shape=(len(samples[key]), *FRAME), chunks=(rows, *FRAME),
                                              dtype=np.uint16 if key == "frames" else np.float32)
                       for key in ("frames", "amplitude", "phase")}  # fmt: skip
            write_interleaved(chunked, 0, {key: samples[key] for key in chunked})
        h5["scale"] = samples["scale"]
    return path


LAYOUTS = ["chunks-1", "chunks-7", "chunks-64", "interleaved-1", "interleaved-7", "contiguous", "gzip"]


@pytest.mark.parametrize("in_flight", [0, 4])  # reads announced to the kernel; reads on 4 threads
@pytest.mark.parametrize("layout", LAYOUTS)
def test_reads_by_byte_offset_equal_hdf5_reads(tmp_path, layout, in_flight):
    samples = make_samples(300, seed=3)
    path = write_layout(tmp_path / f"{layout}.h5", samples, layout)
    ids = np.random.default_rng(1).integers(0, 300, 120)  # any order, repeats allowed
    direct, plain = TrainsetReader(path, uncached=True, in_flight=in_flight), TrainsetReader(path, direct=False)
    assert (direct.direct is None) == (layout == "gzip")  # compressed chunks go through h5py
    got, wanted = direct.read(ids), plain.read(ids)
    for key in ("frames", "amplitude", "phase", "scale"):
        np.testing.assert_array_equal(got[key], wanted[key])
        np.testing.assert_array_equal(got[key], samples[key][ids].astype(got[key].dtype))
    assert got["frames"].dtype == np.uint16
    if layout != "gzip":  # nearby rows are read together: far fewer calls than rows
        assert direct.read_calls < 4 * len(np.unique(ids)) and direct.bytes_read >= np.unique(ids).size * 8 * 8 * 10
    direct.close()
    plain.close()


@pytest.mark.parametrize("layout, calls_per_sample", [("interleaved-1", 1), ("chunks-1", 3)])
def test_a_sample_written_interleaved_is_one_read(tmp_path, layout, calls_per_sample):
    samples = make_samples(400, seed=4)
    path = write_layout(tmp_path / f"{layout}.h5", samples, layout)
    ids = np.arange(5, 400, 80)  # 80 samples (10 KiB of any one dataset) apart: never merged with a neighbour
    with h5py.File(path) as h5, open(path, "rb") as raw:
        reader = DirectRows.for_datasets(raw.fileno(), {k: h5[k] for k in ("frames", "amplitude", "phase", "scale")},
                                         max_gap_bytes=8192)  # fmt: skip
        rows = reader.read(ids)
        reader.close()
    assert set(reader.resident) == {"scale"}  # read once, whole
    assert reader.read_calls == calls_per_sample * len(ids)
    for key in ("frames", "amplitude", "phase", "scale"):
        np.testing.assert_array_equal(rows[key], samples[key][ids].astype(rows[key].dtype))


def test_interleaved_writes_refuse_compressed_chunks(tmp_path):
    with h5py.File(tmp_path / "gzip.h5", "w") as h5:
        packed = h5.create_dataset("frames", (4, *FRAME), np.float32, chunks=(1, *FRAME), compression="gzip")
        with pytest.raises(ValueError, match="unfiltered chunked datasets only; not frames"):
            write_interleaved({"frames": packed}, 0, {"frames": np.zeros((4, *FRAME), np.float32)})


def test_integer_counts_are_stored_in_half_the_bytes(tmp_path):
    path = make_set(tmp_path / "set.h5", 50)
    with h5py.File(path) as h5:
        assert h5["frames"].dtype == np.uint16 and h5["amplitude"].dtype == np.float32
    samples = make_samples(50)
    samples["frames"] = samples["frames"] + 0.5  # not counts: kept as float32
    with h5py.File(write_trainset(tmp_path / "float.h5", [samples], {}), "r") as h5:
        assert h5["frames"].dtype == np.float32


@pytest.mark.parametrize("policy", ["solar", "lru", "frequency"])
def test_both_layouts_give_the_same_samples_in_the_same_order(tmp_path, policy):
    one = make_set(tmp_path / "one.h5", 400, rows_per_chunk=1)
    many = make_set(tmp_path / "many.h5", 400, rows_per_chunk=64)
    kwargs = {"batch_size": 40, "epochs": 2, "seed": 2, "buffer_bytes": 60 * SAMPLE_BYTES, "policy": policy}
    single = [[SolarLoader(path, rank=0, world_size=1, **kwargs)] for path in (one, many)]
    shared = [[SolarLoader(path, rank=r, world_size=2, **kwargs) for r in range(2)] for path in (one, many)]
    for loaders, exact in ((single, True), (shared, False)):
        runs = [[list(loader) for loader in per_layout] for per_layout in loaders]
        for step in range(len(runs[0][0])):
            batches = [[rank_batches[step] for rank_batches in layout_runs] for layout_runs in runs]
            ids = [np.concatenate([b.samples for b in layout]) for layout in batches]
            inputs = [torch.cat([b.inputs for b in layout]) for layout in batches]
            if exact:  # one rank: the same samples in the same order
                assert np.array_equal(ids[0], ids[1]) and torch.equal(inputs[0], inputs[1])
            else:  # two ranks: the same global batch (who takes which may follow the chunks), the same data
                order = [np.argsort(i) for i in ids]
                assert np.array_equal(ids[0][order[0]], ids[1][order[1]])
                assert torch.equal(inputs[0][order[0]], inputs[1][order[1]])


def test_reads_issued_steps_ahead_change_nothing(tmp_path):
    path = make_set(tmp_path / "set.h5", 300, rows_per_chunk=1)
    kwargs = {"batch_size": 32, "epochs": 2, "seed": 3, "buffer_bytes": 50 * SAMPLE_BYTES, "rank": 0, "world_size": 1}
    runs = [list(SolarLoader(path, reads_ahead=ahead, **kwargs)) for ahead in (1, 5)]
    assert len(runs[0]) == len(runs[1]) == 2 * -(-300 // 32)
    for one, other in zip(*runs, strict=True):
        assert np.array_equal(one.samples, other.samples) and torch.equal(one.inputs, other.inputs)
        assert torch.equal(one.phase, other.phase)


def test_any_sample_set_reads_by_keys(tmp_path):
    rng = np.random.default_rng(8)
    rows = {"noisy": rng.random((90, 3, 6, 6), dtype=np.float32), "clean": rng.random((90, 1, 6, 6), dtype=np.float32)}
    path = tmp_path / "patches.h5"
    with h5py.File(path, "w") as h5:
        chunked = {key: h5.create_dataset(key, shape=value.shape, dtype=value.dtype, chunks=(1, *value.shape[1:]))
                   for key, value in rows.items()}  # fmt: skip
        write_interleaved(chunked, 0, rows)
    loader = SolarLoader(path, 16, 2, seed=1, rank=0, world_size=1, buffer_bytes=20 * 4 * 36 * 4,
                         keys=("noisy", "clean"))  # fmt: skip
    batches = list(loader)
    for epoch in range(2):
        ids = np.concatenate([b.samples for b in batches if b.epoch == epoch])
        assert sorted(ids.tolist()) == list(range(90))
    assert 0 < loader.stats["hits"] < 180
    for batch in batches:
        assert batch.inputs is None and batch.arrays["noisy"].shape == (len(batch.samples), 3, 6, 6)
        for key, value in rows.items():
            np.testing.assert_array_equal(batch.arrays[key].numpy(), value[batch.samples])
    with pytest.raises(ValueError, match="missing truth"):
        SolarLoader(path, 16, 1, keys=("noisy", "truth"))


def test_bad_files_give_clear_errors(tmp_path):
    path = make_set(tmp_path / "set.h5", 100)
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated"):
        SolarLoader(truncated, 10, 1)
    wrong = tmp_path / "wrong.h5"
    with h5py.File(wrong, "w") as h5:
        h5["frames"] = np.zeros((10, 8, 8), np.float32)
        h5["amplitude"] = np.zeros((10, 8, 8), np.float32)
    with pytest.raises(ValueError, match="missing phase, scale"):
        SolarLoader(wrong, 10, 1)
    with pytest.raises(ValueError, match="rank 2 is outside world size 2"):
        SolarLoader(path, 10, 1, rank=2, world_size=2)


def _ddp_gradient(rank: int, world_size: int, path: str, store: str, out: str, step: int) -> None:
    # a file store: no TCP port to race for with anything else on the machine
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Conv2d(1, 1, 3, padding=1, dtype=torch.float64))
    loader = SolarLoader(path, 60, 2, seed=4, rank=rank, world_size=world_size, buffer_bytes=40 * SAMPLE_BYTES)
    sizes = []
    for batch in loader:
        if batch.step == step:
            loss = (model(batch.inputs.double()) - batch.amplitude.double()).abs().mean() * batch.loss_scale
            loss.backward()
            sizes.append(len(batch.samples))
    gradient = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    torch.save({"gradient": gradient, "sizes": sizes}, f"{out}.{rank}")
    dist.barrier()  # both ranks done with the store before either tears it down
    dist.destroy_process_group()


def test_ddp_gradient_equals_the_full_batch_gradient_whatever_the_shares(tmp_path):
    path = make_set(tmp_path / "set.h5", 300)
    out = str(tmp_path / "grad")
    plans = make_plans(Schedule(300, 2, 60, seed=4), 2, 40)
    step = int(np.argmax([abs(len(plans[0].steps[t][0]) - len(plans[1].steps[t][0])) for t in range(10)]))
    mp.spawn(_ddp_gradient, args=(2, str(path), str(tmp_path / "store"), out, step), nprocs=2, join=True)
    results = [torch.load(f"{out}.{r}", weights_only=True) for r in range(2)]
    assert results[0]["sizes"] != results[1]["sizes"]  # uneven local batches
    # the reference: one process, the same global batch, the plain mean loss
    ids = np.concatenate([plan.steps[step][0] for plan in plans])
    with h5py.File(path) as h5:
        frames, amplitude, scale = h5["frames"][()][ids], h5["amplitude"][()][ids], h5["scale"][()][ids]
    inputs = torch.from_numpy(np.sqrt(np.maximum(frames, 0) / scale[:, None, None])[:, None]).double()
    torch.manual_seed(0)
    model = torch.nn.Conv2d(1, 1, 3, padding=1, dtype=torch.float64)
    (model(inputs) - torch.from_numpy(amplitude[:, None]).double()).abs().mean().backward()
    reference = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    for result in results:
        torch.testing.assert_close(result["gradient"], reference, rtol=1e-6, atol=1e-9)
