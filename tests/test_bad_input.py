"""Files and options a beamline gets wrong: each is a clear error naming the file, dataset or option (or a warning
where the input is legal but suspicious), before any work starts, and nothing already written is lost."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from edgeray.cli import main
from edgeray.io import CXIFile, EdgeRayFormatError, write_cxi
from edgeray.io import inspect as inspect_file
from edgeray.sim import PtychoSimConfig, simulate_ptycho


@pytest.fixture(scope="module")
def scan_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bad-input")
    scan = simulate_ptycho(PtychoSimConfig(n_positions=60, step_px=6, seed=5))
    return write_cxi(folder / "scan.cxi", scan)


def run_cli(*argv: str) -> int:
    return main([str(a) for a in argv])


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("--epochs", "-1", "--epochs must be >= 1, not -1"),
        ("--batch-size", "0", "--batch-size must be >= 1, not 0"),
        ("--nproc", "-1", "--nproc must be >= 1, not -1"),
        ("--probe-modes", "0", "--probe-modes must be >= 1, not 0"),
        ("--momentum", "nan", "--momentum must be a finite number"),
    ],
)
def test_reconstruct_options_outside_their_limits_stop_before_any_work(scan_file, tmp_path, capsys, flag, value,
                                                                       expected):  # fmt: skip
    output = tmp_path / "product.h5"
    assert run_cli("ptycho", "reconstruct", scan_file, "-o", output, flag, value) == 2
    assert expected in capsys.readouterr().err.replace("\n", " ")
    assert not output.exists() and not output.with_suffix(".json").exists()


def test_more_ranks_than_frames_is_refused_before_any_rank_starts(scan_file, tmp_path, capsys):
    assert run_cli("ptycho", "reconstruct", scan_file, "-o", tmp_path / "p.h5", "--nproc", "61") == 2
    assert "60 frames cannot be shared by 61 ranks" in capsys.readouterr().err.replace("\n", " ")


def test_the_library_checks_its_options_too():
    from edgeray.ptycho.lsqml import LSQMLOptions
    from edgeray.tomo import TomoOptions

    with pytest.raises(ValueError, match=r"LSQMLOptions\.batch_size must be >= 1"):
        LSQMLOptions(batch_size=0)
    with pytest.raises(ValueError, match="n_probe_modes"):
        LSQMLOptions(n_probe_modes=0)
    with pytest.raises(ValueError, match="chunk-slices"):
        TomoOptions(chunk_slices=0)
    with pytest.raises(ValueError, match="iterations"):
        TomoOptions(iterations=0)


def test_a_cxi_file_of_no_frames_is_a_problem_for_info_and_an_error_for_reconstruct(scan_file, tmp_path, capsys):
    empty = tmp_path / "empty.cxi"
    shutil.copy(scan_file, empty)
    with h5py.File(empty, "a") as h5:
        frames = h5["entry_1/instrument_1/detector_1/data"]
        del h5["entry_1/instrument_1/detector_1/data"]
        h5.create_dataset("entry_1/instrument_1/detector_1/data", shape=(0, *frames.shape[1:]), dtype=frames.dtype,
                          maxshape=(None, *frames.shape[1:]))  # fmt: skip
        del h5["entry_1/sample_1/geometry_1/translation"]
        h5["entry_1/sample_1/geometry_1/translation"] = np.zeros((0, 3))
    assert any("holds no frames" in p for p in inspect_file(empty)["problems"])
    assert run_cli("ptycho", "reconstruct", empty, "-o", tmp_path / "p.h5") == 2
    err = capsys.readouterr().err.replace("\n", " ")
    assert "empty.cxi" in err and "holds no frames" in err


def test_a_damaged_gzip_chunk_is_named_not_a_traceback(scan_file, tmp_path, capsys):
    damaged = tmp_path / "damaged.cxi"
    shutil.copy(scan_file, damaged)
    with h5py.File(damaged, "r") as h5:
        info = h5["entry_1/instrument_1/detector_1/data"].id.get_chunk_info(0)
    with open(damaged, "r+b") as raw:  # garbage in the middle of the first compressed chunk
        raw.seek(info.byte_offset + info.size // 2)
        raw.write(os.urandom(min(4096, info.size // 3)))
    with CXIFile(damaged) as cxi, pytest.raises(EdgeRayFormatError, match="cannot be read") as caught:
        cxi.read_frames(0, 10)
    assert "damaged.cxi" in str(caught.value) and "detector_1/data" in str(caught.value)
    assert run_cli("ptycho", "reconstruct", damaged, "-o", tmp_path / "p.h5", "--epochs", "1") == 2
    assert "cannot be read" in capsys.readouterr().err.replace("\n", " ")


def test_frames_of_another_size_than_the_model_are_named_in_nn_infer(tmp_path, capsys):
    tiny = simulate_ptycho(PtychoSimConfig(n_positions=20, step_px=4, frame_size=16, seed=2))
    path = write_cxi(tmp_path / "tiny.cxi", tiny)
    assert run_cli("nn", "infer", path, "-o", tmp_path / "image.h5") == 2
    err = capsys.readouterr().err.replace("\n", " ")
    assert "tiny.cxi" in err and "16x16" in err and "64x64" in err


def test_the_onnx_cache_follows_the_weights_not_the_clock(tmp_path):
    """A restored (older) checkpoint beside a newer graph of other weights: the graph of the restored weights runs."""
    from edgeray.nn.checkpoint import SHIPPED
    from edgeray.nn.infer import cached_onnx

    model = tmp_path / "model"
    shutil.copytree(SHIPPED, model, ignore=shutil.ignore_patterns("*.onnx"))
    exported: list[Path] = []

    def export(to: Path) -> None:
        to.write_bytes((model / "model.safetensors").read_bytes()[:64])
        exported.append(to)

    first = cached_onnx(model, export)
    assert cached_onnx(model, export) == first and len(exported) == 1  # cached
    weights = model / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # other weights
    os.utime(weights, (1, 1))  # ... restored with an old time stamp
    second = cached_onnx(model, export)
    assert second != first and len(exported) == 2 and not first.exists()


def test_tomography_files_and_options(tmp_path, capsys):
    from edgeray.io import write_dxchange
    from edgeray.sim.tomo import TomoSimConfig, simulate_tomo

    scan = simulate_tomo(TomoSimConfig(size=32, slices=2, angles=30, seed=1))
    good = write_dxchange(tmp_path / "good.h5", scan)
    assert run_cli("tomo", "recon", good, "-o", tmp_path / "r.h5", "--chunk-slices", "0") == 2
    assert "--chunk-slices must be >= 1" in capsys.readouterr().err
    assert run_cli("tomo", "recon", good, "-o", tmp_path / "r.h5", "--iterations", "0", "--algorithm", "sirt") == 2
    assert "--iterations must be >= 1" in capsys.readouterr().err
    # a centre far outside the detector: legal, warned, in the summary
    assert run_cli("tomo", "recon", good, "-o", tmp_path / "far.h5", "--center", "1e9") == 0
    assert "outside the detector" in capsys.readouterr().err.replace("\n", " ")
    assert json.loads((tmp_path / "far.json").read_text())["warnings"]
    # flats and darks swapped: info names the problem, recon names the file
    swapped = scan.__class__(**{**scan.__dict__, "flats": scan.darks, "darks": scan.flats})
    bad = write_dxchange(tmp_path / "swapped.h5", swapped)
    assert any("swapped" in p for p in inspect_file(bad)["problems"])
    assert run_cli("tomo", "recon", bad, "-o", tmp_path / "s.h5", "--center", "16") == 2
    err = capsys.readouterr().err.replace("\n", " ")
    assert "swapped.h5" in err and "flats and darks swapped" in err
    # every angle the same: info says so, recon warns
    still = scan.__class__(**{**scan.__dict__, "theta_deg": np.zeros_like(scan.theta_deg)})
    frozen = write_dxchange(tmp_path / "frozen.h5", still)
    assert any("distinct angle" in p for p in inspect_file(frozen)["problems"])
    assert run_cli("tomo", "recon", frozen, "-o", tmp_path / "f.h5", "--center", "16") == 0
    assert "did not rotate" in capsys.readouterr().err.replace("\n", " ")
