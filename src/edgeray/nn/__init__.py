"""Neural-network surrogates: the edge model (physics-consistent, trained on a procedural corpus), PtychoNN and a
compact baseline; training sets, training, label-free fine-tuning, evaluation, stitched inference, ONNX export, and the
shipped edge model (``edgeray/nn/shipped/edge``)."""

from edgeray.nn.checkpoint import SHIPPED, load_model, save_model
from edgeray.nn.infer import InferenceResult, infer_scan, predict
from edgeray.nn.models import MODELS, CompactNet, ModelConfig, PtychoNN, build_model, normalize_frames
from edgeray.nn.set_training import TrainOptions, TrainsetDataset, train
from edgeray.nn.stitch import centre_weights, stitch
from edgeray.nn.trainset import samples_from_reconstruction, samples_from_scan, simulate_scans, write_trainset

__all__ = [
    "MODELS",
    "SHIPPED",
    "CompactNet",
    "InferenceResult",
    "ModelConfig",
    "PtychoNN",
    "TrainOptions",
    "TrainsetDataset",
    "build_model",
    "centre_weights",
    "infer_scan",
    "load_model",
    "normalize_frames",
    "predict",
    "samples_from_reconstruction",
    "samples_from_scan",
    "save_model",
    "simulate_scans",
    "stitch",
    "train",
    "write_trainset",
]
