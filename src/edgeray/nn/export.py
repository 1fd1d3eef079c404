"""ONNX export and an ONNX Runtime CPU path, for the edge."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

EXPORT_VERSION = 2
"""Bumped when the exported graph changes for the same weights (2: the edge model's Softplus written out), so that
ONNX files cached beside a model's weights are written again."""


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


class _FrameBranch(nn.Module):
    """A group model's per-frame branch: ``frames (N, 1, H, W)`` -> ``patches (N, 2, H, W)`` (real, imaginary)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.model.frame_patches(frames)[:, 0]


class _Fusion(nn.Module):
    """A group model's fusion: ``patches (N, K, 2, H, W)``, ``offsets (N, K, 2)`` -> ``(amplitude, phase)``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, patches: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.fuse_patches(patches, offsets)


def group_onnx_paths(path: str | Path) -> tuple[Path, Path]:
    """The two files of an exported group model: its per-frame branch and its fusion."""
    path = Path(path)
    return path.with_suffix(".frame.onnx"), path.with_suffix(".fuse.onnx")


def export_group_onnx(model: nn.Module, path: str | Path, frame_size: int, group_size: int) -> Path:
    """Write a group model (:class:`edgeray.nn.group.GroupNet`) as two ONNX graphs (opset 17, dynamic batch), so that
    each frame runs through the per-frame branch once however many groups it belongs to: ``PATH.frame.onnx``
    (``frames`` (N, 1, H, W) -> ``patches`` (N, 2, H, W)) and ``PATH.fuse.onnx`` (``patches`` (N, K, 2, H, W),
    ``offsets`` (N, K, 2) -> ``amplitude``, ``phase`` (N, 1, H, W)). Writes ``path`` last (an empty marker)."""
    frame_path, fuse_path = group_onnx_paths(path)
    model = model.eval().cpu()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the group size is fixed in the graph, as meant
        torch.onnx.export(_FrameBranch(model), (torch.rand(2, 1, frame_size, frame_size),), str(frame_path),
                          input_names=["frames"], output_names=["patches"],
                          dynamic_axes={"frames": {0: "batch"}, "patches": {0: "batch"}}, opset_version=17,
                          dynamo=False)  # fmt: skip
        example = (torch.rand(2, group_size, 2, frame_size, frame_size), torch.zeros(2, group_size, 2))
        torch.onnx.export(_Fusion(model), example, str(fuse_path), input_names=["patches", "offsets"],
                          output_names=["amplitude", "phase"],
                          dynamic_axes={name: {0: "batch"} for name in ("patches", "offsets", "amplitude", "phase")},
                          opset_version=17, dynamo=False)  # fmt: skip
    Path(path).write_bytes(b"")
    return Path(path)


class OnnxGroupModel:
    """ONNX Runtime sessions with a group model's interface: ``frame_patches``, ``fuse_patches`` and the call
    ``(frames (N, K, H, W), offsets (N, K, 2)) -> (amplitude, phase)``; ``path`` as :func:`export_group_onnx`
    wrote it."""

    takes_groups = True

    def __init__(self, path: str | Path, threads: int | None = None):
        frame_path, fuse_path = group_onnx_paths(path)
        self.frame, self.fuse = OnnxModel(frame_path, threads).session, OnnxModel(fuse_path, threads).session

    def frame_patches(self, frames: torch.Tensor) -> torch.Tensor:
        """``(B, K, H, W)`` -> ``(B, K, 2, H, W)``."""
        b, k, height, width = frames.shape
        flat = np.ascontiguousarray(frames.reshape(b * k, 1, height, width).cpu().numpy(), dtype=np.float32)
        (patches,) = self.frame.run(None, {"frames": flat})
        return torch.from_numpy(patches).reshape(b, k, 2, height, width)

    def fuse_patches(self, patches: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feeds = {"patches": np.ascontiguousarray(patches.cpu().numpy(), dtype=np.float32),
                 "offsets": np.ascontiguousarray(offsets.cpu().numpy(), dtype=np.float32)}  # fmt: skip
        wanted = {node.name for node in self.fuse.get_inputs()}  # a group of one has no use for offsets
        amplitude, phase = self.fuse.run(None, {name: value for name, value in feeds.items() if name in wanted})
        return torch.from_numpy(amplitude), torch.from_numpy(phase)

    def __call__(self, frames: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fuse_patches(self.frame_patches(frames), offsets)

    def eval(self) -> OnnxGroupModel:
        return self


class _FromCounts(nn.Module):
    """A model fed detector counts: ``counts (N, H, W)`` (any integer or float dtype) and the scan's mean count per
    pixel ``scale (1,)`` -> the model's outputs, the normalization ``sqrt(counts / scale)`` inside the graph."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, counts: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = torch.sqrt(counts.to(torch.float32).clamp_min(0) / scale)[:, None]
        return self.model(inputs)


def export_counts_onnx(model: nn.Module, path: str | Path, frame_size: int, dtype: str = "uint16") -> Path:
    """Write ``model`` as ONNX taking raw counts: inputs ``counts`` (N, H, W) of ``dtype`` and ``scale`` (1,)
    float32, outputs ``amplitude``, ``phase``; the frames go to ONNX Runtime as the detector sent them."""
    import onnx

    path = Path(path)
    # The TorchScript exporter knows no unsigned 16/32-bit inputs: trace with int32 (the graph starts with a Cast
    # to float32 either way), then declare the input as the detector's dtype.
    traced_dtype = torch.float32 if dtype == "float32" else torch.int32
    example = (torch.zeros(2, frame_size, frame_size, dtype=traced_dtype), torch.ones(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # a group model's group size is fixed in the graph
        torch.onnx.export(
            _FromCounts(model.eval().cpu()),
            example,
            str(path),
            input_names=["counts", "scale"],
            output_names=["amplitude", "phase"],
            dynamic_axes={"counts": {0: "batch"}, "amplitude": {0: "batch"}, "phase": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    graph = onnx.load(str(path))
    elem = {"uint8": onnx.TensorProto.UINT8, "uint16": onnx.TensorProto.UINT16, "uint32": onnx.TensorProto.UINT32,
            "float32": onnx.TensorProto.FLOAT}[dtype]  # fmt: skip
    graph.graph.input[0].type.tensor_type.elem_type = elem
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))
    return path


class CountsRuntime:
    """A model on raw counts: ``runtime(counts (N, H, W) ndarray, scale) -> (amplitude, phase)`` tensors
    ``(N, 1, H, W)``. ONNX Runtime on the CPU (the normalization inside the graph, the counts passed as they lie in
    memory), torch elsewhere."""

    def __init__(self, model: nn.Module, path: str | Path | None, frame_size: int, dtype: str, threads: int = 1):
        self.model, self.session = model, None
        device = next(iter(model.buffers()), torch.zeros(1)).device
        if path is not None and device.type == "cpu" and dtype in ("uint8", "uint16", "uint32", "float32"):
            import onnxruntime as ort

            export_counts_onnx(model, path, frame_size, dtype)
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.device = device

    def __call__(self, counts: np.ndarray, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        if self.session is not None:
            amplitude, phase = self.session.run(
                None, {"counts": np.ascontiguousarray(counts), "scale": np.array([scale], dtype=np.float32)}
            )
            return torch.from_numpy(amplitude), torch.from_numpy(phase)
        with torch.inference_mode():
            tensor = torch.from_numpy(np.asarray(counts, dtype=np.float32)).to(self.device)
            return self.model(torch.sqrt(tensor.clamp_min(0) / scale)[:, None])
