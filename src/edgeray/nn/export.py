"""ONNX export and an ONNX Runtime CPU path, for the edge."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn


def export_onnx(model: nn.Module, path: str | Path, frame_size: int) -> Path:
    """Write ``model`` as ONNX (opset 17, dynamic batch): input ``frames`` (N, 1, H, W), outputs ``amplitude``,
    ``phase``."""
    path = Path(path)
    example = torch.zeros(2, 1, frame_size, frame_size)
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated, but needs no onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        _export(model, example, path)
    return path


def _export(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    torch.onnx.export(
        model.eval().cpu(),
        (example,),
        str(path),
        input_names=["frames"],
        output_names=["amplitude", "phase"],
        dynamic_axes={"frames": {0: "batch"}, "amplitude": {0: "batch"}, "phase": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )


class OnnxModel:
    """ONNX Runtime session with the torch model's call signature: ``(N, 1, H, W)`` -> ``(amplitude, phase)``."""

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        amplitude, phase = self.session.run(None, {"frames": np.ascontiguousarray(frames.cpu().numpy())})
        return torch.from_numpy(amplitude), torch.from_numpy(phase)

    def eval(self) -> OnnxModel:
        return self
