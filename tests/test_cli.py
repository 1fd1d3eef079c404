"""The `edgeray` command, run as a user runs it: a real subprocess, real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from edgeray.io import read_cxi

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def edgeray(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "edgeray", *args], capture_output=True, text=True, timeout=300, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"edgeray {' '.join(args)} -> {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def test_help_lists_groups():
    out = edgeray("--help").stdout
    for group in ("simulate", "info", "view", "demo"):
        assert group in out


@pytest.mark.parametrize("scan", ["spiral", "raster", "concentric"])
def test_simulate_ptycho_writes_cxi_summary_and_preview(tmp_path, scan):
    out = tmp_path / "scan.cxi"
    preview = tmp_path / "scan.png"
    edgeray(
        "simulate", "ptycho", "-o", str(out), "--frame-size", "32", "--n-positions", "60", "--step-px", "4",
        "--scan", scan, "--photons", "1e4", "--object", "random", "--compression", "bitshuffle",
        "--preview", str(preview),
    )  # fmt: skip
    summary = json.loads((tmp_path / "scan.json").read_text())
    assert summary["seconds"] > 0 and summary["frames_per_s"] > 0
    assert summary["n_frames"] == 60 and summary["config"]["scan"] == scan
    with h5py.File(out, "r") as h5:
        assert h5["entry_1/data_1/data"].shape == (60, 32, 32)
        assert "entry_1/sample_1/ground_truth/object" in h5
    scan_data = read_cxi(out)
    assert abs(scan_data.frames.sum(axis=(1, 2)).mean() - 1e4) < 5 * np.sqrt(1e4 / 60)
    assert preview.read_bytes()[:8] == PNG_MAGIC


def test_info_and_view_on_simulated_and_real_files(tmp_path, petra_cxi, tooth_h5):
    out = tmp_path / "scan.cxi"
    edgeray("simulate", "ptycho", "-o", str(out), "--frame-size", "32", "--n-positions", "40", "--step-px", "4")
    text = edgeray("info", str(out)).stdout
    assert "no validation problems" in text and "object_pixel_size_m" in text
    info = json.loads(edgeray("info", str(petra_cxi), "--json").stdout)
    assert info["kind"] == "cxi" and info["n_frames"] == 200
    assert any("(3, 2)" in line for line in info["assumptions"])
    flipped = json.loads(edgeray("info", str(petra_cxi), "--json", "--translation", "probe").stdout)
    assert any("not negated" in line for line in flipped["assumptions"])
    for source in (out, petra_cxi, tooth_h5):
        png = tmp_path / f"{source.stem}.png"
        edgeray("view", str(source), "-o", str(png))
        assert png.read_bytes()[:8] == PNG_MAGIC


def test_simulate_tomo_info_view(tmp_path):
    out = tmp_path / "tomo.h5"
    edgeray("simulate", "tomo", "-o", str(out), "--phantom", "foam", "--size", "48", "--slices", "2",
            "--angles", "30", "--rings")  # fmt: skip
    summary = json.loads((tmp_path / "tomo.json").read_text())
    assert summary["projections_shape"] == [30, 2, 48] and summary["seconds"] > 0
    info = json.loads(edgeray("info", str(out), "--json").stdout)
    assert info["kind"] == "tomo-raw" and info["n_angles"] == 30 and info["problems"] == []
    edgeray("view", str(out), "-o", str(tmp_path / "tomo.png"))
    assert (tmp_path / "tomo.png").read_bytes()[:8] == PNG_MAGIC


def test_bad_input_gives_a_clear_error_and_exit_2(tmp_path):
    out = tmp_path / "scan.cxi"
    edgeray("simulate", "ptycho", "-o", str(out), "--frame-size", "32", "--n-positions", "20", "--step-px", "4")
    with h5py.File(out, "r+") as h5:
        del h5["entry_1/sample_1/geometry_1/translation"]
    result = edgeray("view", str(out), "-o", str(tmp_path / "x.png"), check=False)
    assert result.returncode == 2
    assert "translation: missing dataset" in result.stderr and str(out) in result.stderr
    assert not (tmp_path / "x.png").exists()
    info = edgeray("info", str(out), check=False)
    assert info.returncode == 1 and "missing dataset" in info.stdout
    missing = edgeray("info", str(tmp_path / "nope.cxi"), check=False)
    assert missing.returncode == 1 and "no such file" in missing.stdout


def test_failed_simulation_leaves_existing_file(tmp_path):
    out = tmp_path / "scan.cxi"
    edgeray("simulate", "ptycho", "-o", str(out), "--frame-size", "32", "--n-positions", "20", "--step-px", "4")
    before = out.read_bytes()
    result = edgeray("simulate", "ptycho", "-o", str(out), "--object", "no-such-image", check=False)
    assert result.returncode == 2 and "no-such-image" in result.stderr
    assert out.read_bytes() == before


def test_demo_streams_a_scan_through_the_edge(tmp_path):
    out = tmp_path / "demo"
    result = edgeray(
        "demo", "--out", str(out), "--frames", "1500", "--hold", "0", "--port", "0", "--refine-tail-s", "2"
    )
    assert "live view: http://127.0.0.1:" in result.stderr
    assert "the edge could have kept" in result.stderr  # the headroom line at the end of the scan
    report = json.loads((out / "demo.json").read_text())
    edge = report["edge"]
    assert report["detector"]["frames_sent"] == 1500
    assert edge["frames_received"] == edge["frames_written"] == edge["frames_inferred"] == 1500
    assert 0 < report["vs_ground_truth"]["ssim_phase"] <= 1
    assert read_cxi(out / "scan.cxi").frames.shape == (1500, 64, 64)
    assert (out / "scan.png").read_bytes()[:8] == PNG_MAGIC


def test_ptycho_reconstruct_writes_product_png_and_summary(tmp_path):
    scan = tmp_path / "scan.cxi"
    edgeray("simulate", "ptycho", "-o", str(scan), "--frame-size", "32", "--n-positions", "150", "--step-px", "3",
            "--photons", "1e6")  # fmt: skip
    out = tmp_path / "product.h5"
    edgeray("ptycho", "reconstruct", str(scan), "-o", str(out), "--epochs", "30", "--batch-size", "32")
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["engine"] == "lsqml" and summary["epochs"] == 30
    assert summary["seconds"] > 0 and summary["frames_per_s"] > 0
    assert summary["final_cost"] < summary["cost"][0]
    assert summary["vs_ground_truth"]["rel_error"] < 0.1
    assert out.with_suffix(".png").read_bytes()[:8] == PNG_MAGIC
    with h5py.File(out, "r") as h5:
        assert h5["object"].ndim == 3 and h5["probe"].shape == (1, 32, 32)
        assert len(h5["loss_values"]) == 30


def test_ptycho_reconstruct_near_field_real_scan(tmp_path, petra_cxi):
    out = tmp_path / "petra.h5"
    edgeray("ptycho", "reconstruct", str(petra_cxi), "-o", str(out), "--epochs", "4", "--batch-size", "20",
            "--near-field", "--focus-to-sample-m", "3.65e-3", "--engine", "rpie")  # fmt: skip
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["propagation"] == "near" and "vs_ground_truth" not in summary
    assert summary["object_pixel_size_m"][0] == pytest.approx(1.7866e-7, rel=1e-3)


def test_ptycho_reconstruct_bad_option(tmp_path, petra_cxi):
    result = edgeray("ptycho", "reconstruct", str(petra_cxi), "-o", str(tmp_path / "x.h5"), "--device", "cuda:7",
                     check=False)  # fmt: skip
    assert result.returncode == 2 and "cuda" in result.stderr.lower()
    assert not (tmp_path / "x.h5").exists()
    assert "frames/s" not in result.stdout  # said before any work (no progress bar was started)


@pytest.mark.parametrize("benchmark", ["ptycho_vs_ptychi.py", "tomo_vs_astra.py"])
def test_gpu_benchmarks_say_at_once_when_there_is_no_gpu(benchmark):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / benchmark
    result = subprocess.run([sys.executable, str(script), "--device", "cuda"], capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.returncode == 1
    assert lines == [{"error": "device 'cuda' asked for, but torch sees no CUDA device here (use --device cpu)"}]


def test_nn_make_trainset_train_infer(tmp_path):
    trainset = tmp_path / "set.h5"
    edgeray("nn", "make-trainset", "--simulate", "120", "--frame-size", "32", "--step-px", "4", "-o", str(trainset))
    assert json.loads(trainset.with_suffix(".json").read_text())["samples"] == 120
    with h5py.File(trainset, "r") as h5:
        assert h5["frames"].shape == h5["amplitude"].shape == h5["phase"].shape == (120, 32, 32)
        assert json.loads(h5.attrs["valid_for"])["frame_size"] == 32
    model = tmp_path / "model"
    edgeray("nn", "train", str(trainset), "-o", str(model), "--epochs", "2", "--width", "4", "--frame-size", "32")
    card = json.loads((model / "model.json").read_text())
    assert len(card["history"]["val_loss"]) == 2 and card["valid_for"]["frame_size"] == 32
    scan = tmp_path / "scan.cxi"
    edgeray("simulate", "ptycho", "-o", str(scan), "--frame-size", "32", "--n-positions", "50", "--step-px", "4")
    out = tmp_path / "nn.h5"
    edgeray("nn", "infer", str(scan), "-o", str(out), "--model", str(model))
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["frames_per_s"] > 0 and "vs_ground_truth" in summary and summary["geometry_mismatches"] == []
    assert out.with_suffix(".png").read_bytes()[:8] == PNG_MAGIC


def test_edge_model_train_finetune_evaluate_from_the_command_line(tmp_path):
    """The edge model's whole life on the command line: train on the corpus (a few steps), fine-tune on a scan's
    own frames, evaluate beside LSQML. Each writes its files; a compact model is refused where physics is needed."""
    model = tmp_path / "edge"
    edgeray("nn", "train", "--corpus", "-o", str(model), "--width", "4", "--steps", "4", "--objects-per-step", "2",
            "--checkpoint-every", "2", "--threads", "1")  # fmt: skip
    card = json.loads((model / "model.json").read_text())
    assert card["config"]["kind"] == "edge" and card["history"]["step"] == [2, 4]
    assert (model / "MODEL_CARD.md").exists() and json.loads((model / "train.json").read_text())["seconds"] > 0
    scan = tmp_path / "scan.cxi"
    edgeray("simulate", "ptycho", "-o", str(scan), "--n-positions", "80", "--step-px", "6", "--object", "random")
    tuned = tmp_path / "tuned"
    result = edgeray("nn", "finetune", str(scan), "--model", str(model), "-o", str(tuned), "--epochs", "1")
    assert "held-out frames' Poisson deviance" in result.stderr
    summary = json.loads((tuned / "finetune.json").read_text())
    assert summary["holdout_frames"] == 8 and summary["seconds"] > 0
    assert summary["probe"].startswith("estimated from the data")  # no probe in the file, none given
    assert "- Regime: twin, learned from frames simulated" in (tuned / "MODEL_CARD.md").read_text()  # the default
    table = tmp_path / "eval.json"
    edgeray("nn", "evaluate", str(tuned), "--quick", "--pairs", "1", "--frames", "60", "--lsqml-epochs", "2",
            "-o", str(table))  # fmt: skip
    evaluation = json.loads(table.read_text())
    case = evaluation["cases"][0]
    assert case["case"].startswith("unseen") and -1 <= case["nn_phase_ssim"] <= 1 and "lsqml_phase_ssim" in case
    assert evaluation["frames_per_s"] > 0
    compact = tmp_path / "compact"
    from edgeray.nn.checkpoint import save_model
    from edgeray.nn.models import ModelConfig, build_model

    save_model(compact, build_model(ModelConfig("compact", 4, 3, 64)), {"config": ModelConfig("compact", 4).to_dict()})
    refused = edgeray("nn", "finetune", str(scan), "--model", str(compact), "-o", str(tmp_path / "x"), check=False)
    assert refused.returncode == 2 and "needs an edge or group model" in refused.stderr


def _subparser(parser, *names):
    import argparse

    for name in names:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def test_the_flags_take_their_defaults_from_the_options_they_fill():
    """One table of defaults: each flag of these commands that fills an options field defaults to that field's
    default (written once, in the options), compared for every flag whose name is a field of the options."""
    import dataclasses

    from edgeray.cli import build_parser
    from edgeray.cli.demo import DEMO_SCAN
    from edgeray.cli.stream import REPLAY_SCAN
    from edgeray.nn.corpus_training import CorpusTrainOptions
    from edgeray.nn.evaluate import EvaluationOptions
    from edgeray.nn.finetune import FinetuneOptions
    from edgeray.nn.models import ModelConfig
    from edgeray.nn.set_training import TrainOptions
    from edgeray.sim import PtychoSimConfig, TomoSimConfig
    from edgeray.stream.edge import EdgeOptions
    from edgeray.stream.learn import LearnOptions
    from edgeray.stream.pva import PvaOptions
    from edgeray.stream.refine import RefineOptions
    from edgeray.stream.tomo import TomoEdgeOptions
    from edgeray.tomo.denoise import DenoiserOptions
    from edgeray.tomo.recon import TomoOptions
    from edgeray.tomo.tomogan import TomoGANConfig
    from edgeray.workflow.flow import FlowOptions

    parser = build_parser()
    cases = [
        (("edge",), EdgeOptions, ""),
        (("edge",), TomoEdgeOptions, ""),
        (("edge",), RefineOptions, "refine_"),
        (("edge",), LearnOptions, "learn_"),
        (("edge",), PvaOptions, "pva_"),
        (("tomo", "recon"), TomoOptions, ""),
        (("tomo", "train-denoiser"), DenoiserOptions, ""),
        (("tomo", "train-denoiser"), TomoGANConfig, ""),
        (("nn", "finetune"), FinetuneOptions, ""),
        (("nn", "train"), CorpusTrainOptions, ""),
        (("nn", "train"), TrainOptions, ""),
        (("nn", "train"), ModelConfig, ""),
        (("nn", "evaluate"), EvaluationOptions, ""),
        (("nn", "make-trainset"), PtychoSimConfig(), ""),
        (("simulate", "ptycho"), PtychoSimConfig(), ""),
        (("simulate", "tomo"), TomoSimConfig(), ""),
        (("detector", "replay"), REPLAY_SCAN, ""),  # its own scan, written once beside the command
        (("demo",), DEMO_SCAN, ""),
        (("workflow", "run"), FlowOptions, ""),
    ]
    checked = 0
    for names, options, prefix in cases:
        instance = options if not isinstance(options, type) else None
        defaults = {f.name: getattr(instance, f.name) if instance else f.default for f in dataclasses.fields(options)}
        defaults = {name: value for name, value in defaults.items() if value is not dataclasses.MISSING}
        for action in _subparser(parser, *names)._actions:
            field = action.dest.removeprefix(prefix) if action.dest.startswith(prefix) else None
            if field in defaults and action.default is not None and not isinstance(action.default, bool):
                assert action.default == defaults[field], (" ".join(names), action.dest, action.default)
                checked += 1
    assert checked >= 80


def _parse_with_config(*argv: str):
    from edgeray.cli import build_parser
    from edgeray.cli.config import apply_config

    parser = build_parser()
    return apply_config(parser, parser.parse_args(list(argv)), list(argv))


def _options_in(args) -> dict:
    return {k: v for k, v in vars(args).items() if k not in ("config", "config_parser", "func", "print_config")}


@pytest.mark.parametrize("command", [("edge",), ("ptycho", "reconstruct", "scan.cxi", "-o", "out.h5"),
                                     ("tomo", "recon", "raw.h5", "-o", "rec.h5")])  # fmt: skip
def test_print_config_reads_back_as_the_same_options(tmp_path, capsys, command):
    """`--print-config` with some flags, written to a file, given back with `--config`: the same options."""
    from edgeray.cli import main

    flags = {
        "edge": ["--max-batch", "16", "--refine", "--refine-engine", "rpie", "--http", "off"],
        "ptycho": ["--engine", "rpie", "--epochs", "7", "--fixed-probe", "--momentum", "0.5"],
        "tomo": ["--algorithm", "sirt", "--center", "40.5", "--data-path", "/entry/imaging/data"],
    }[command[0]]
    assert main([*command, *flags, "--print-config"]) == 0
    text = capsys.readouterr().out
    config = tmp_path / "options.toml"
    config.write_text(text)
    assert _options_in(_parse_with_config(*command, "--config", str(config))) == _options_in(
        _parse_with_config(*command, *flags)
    )


def test_a_config_file_is_checked_like_the_command_line(tmp_path):
    """Tables, YAML, the command line over the file; a key the command lacks, a wrong type or choice and a
    positional are refused by name (exit status 2), and the command does no work."""
    toml = tmp_path / "edge.toml"
    toml.write_text('max_batch = 32\nout = "runs"\n[refine]\nengine = "rpie"\ntail-s = 3\n')
    args = _parse_with_config("edge", "--config", str(toml), "--max-batch", "8")
    assert (args.max_batch, args.out, args.refine, args.refine_engine, args.refine_tail_s) == (8, Path("runs"), True,
                                                                                               "rpie", 3.0)  # fmt: skip
    toml.write_text("[refine]\non = false\nengine = 'rpie'\n")
    assert _parse_with_config("edge", "--config", str(toml)).refine is False
    yaml_file = tmp_path / "recon.yaml"
    yaml_file.write_text("algorithm: sirt\niterations: 30\nslices: '0:4'\n")
    args = _parse_with_config("tomo", "recon", "raw.h5", "-o", "r.h5", "--config", str(yaml_file))
    assert (args.algorithm, args.iterations, args.slices) == ("sirt", 30, "0:4")
    refusals = {
        "max-bach = 3\n": "unknown key 'max-bach' for `edgeray edge`; did you mean max-batch?",
        'max-batch = "many"\n': "max-batch: 'many' is not valid",
        "max-batch = 2.5\n": "max-batch: a whole number, not 2.5",
        'refine-engine = "epie"\n': "refine-engine: 'epie' is not one of lsqml, rpie",
        "refine = 1\n": "refine: true or false, not 1",
        "max-batch = [1, 2]\n": "max-batch: a single value",
    }
    for text, message in refusals.items():
        toml.write_text(text)
        result = edgeray("edge", "--config", str(toml), "--out", str(tmp_path / "never"), check=False)
        assert result.returncode == 2 and message in result.stderr.replace("\n", ""), (text, result.stderr)
        assert not (tmp_path / "never").exists()
    toml.write_text('input = "other.h5"\n')
    result = edgeray("tomo", "recon", "raw.h5", "-o", str(tmp_path / "r.h5"), "--config", str(toml), check=False)
    assert result.returncode == 2 and "input: a positional argument; give it on the command line" in result.stderr
    toml.write_text("max-batch = \n")
    result = edgeray("edge", "--config", str(toml), check=False)
    assert result.returncode == 2 and "not valid TOML" in result.stderr
