"""The limits of every numeric option of the command line, in one table, checked before any work starts.

Each entry is a :data:`edgeray.limits.Limit` ``(low, high, kind)``, checked by the rule the options classes use for
their fields (:func:`edgeray.limits.problem`); every float option must also be finite. A value outside its limits
stops the command at once with an error naming the flag (``--epochs must be >= 1, not -1``); an option missing here
is only checked for finiteness.
"""

from __future__ import annotations

import argparse

from edgeray.limits import Limit, problem

AT_LEAST_ONE = (
    "angles batch batch_per_rank batch_size capacity checkpoint_every chunk_slices cycles depth epochs "
    "finetune_epochs frames group_size in_slices infer_threads infer_workers iterations lsqml_epochs max_batch "
    "max_object_px n_positions n_scans nproc objects_per_step pairs patch probe_modes pva_frames ranks repeat "
    "ring_frames rows_per_chunk sample_bytes samples scans simulate size slices sparse_stride steps stream stride "
    "threads update_every width"
).split()
AT_LEAST_ZERO = (
    "dense frame seed workers hold beamstop_px jitter_px zingers refine_tail_s learn_tail_s learn_start_frames "
    "adversarial_weight overlap_weight perceptual_weight physics_weight slope_weight rate"
).split()
ABOVE_ZERO = (
    "buffer_mb detector_pixel_m distance_m energy_ev focus_to_sample_m idle_timeout learning_rate lr "
    "max_attenuation max_wait_ms memory_gb photons probe_diameter_px pva_idle_s pva_wait_s step_px saturation "
    "tiled_period_s tiled_retry_s view_fps"
).split()

LIMITS: dict[str, Limit] = {
    **{name: (1, None, ">=") for name in AT_LEAST_ONE},
    **{name: (0, None, ">=") for name in AT_LEAST_ZERO},
    **{name: (0, None, ">") for name in ABOVE_ZERO},
    "splits": (2, None, ">="),
    "frame_size": (8, 4096, ">="),
    "buffer_fraction": (0, 1, ">"),
    "momentum": (0, 0.999, ">="),
    "port": (0, 65535, ">="),
}


def _flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """``dest -> its longest flag`` over the parser and its sub-commands."""
    found: dict[str, str] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                for dest, flag in _flags(sub).items():
                    found.setdefault(dest, flag)
        elif action.option_strings:
            found.setdefault(action.dest, max(action.option_strings, key=len))
    return found


def check_limits(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Raise ValueError naming the first numeric option of ``args`` outside its :data:`LIMITS` (or not finite)."""
    flags = None
    for dest, value in vars(args).items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        found = problem(value, *LIMITS.get(dest, (None, None, ">=")))
        if found is not None:
            flags = flags or _flags(parser)
            raise ValueError(f"{flags.get(dest, dest)} {found}, not {value:g}")
