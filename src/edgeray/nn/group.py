"""The multi-frame network: a frame and its nearest neighbours in, the frame's object window out.

Ptychography's information is in the overlap: one frame fixes its patch only loosely, neighbours that see the same
object fix it together. :class:`GroupNet` takes a group of ``K`` frames, the anchor first, with their offsets from
the anchor (sub-pixel, object pixels), and predicts the anchor's window:

1. each frame is inverted by the single-frame edge model (:class:`edgeray.nn.models.EdgeNet`, shared weights);
2. each neighbour's patch is moved onto the anchor's grid by its offset (bilinear, what falls outside is dropped)
   and turned by the constant phase that best matches the anchor where both are lit (a frame fixes its patch only
   up to a constant phase);
3. the probe-weighted mean of the group's patches and the anchor's own patch, with the neighbours' coverage, go
   through a small real-space network that predicts a complex correction of the mean: the output.

With ``K = 1`` the mean is the anchor's patch and the model takes the single-frame interface. Groups are built
by :func:`group_indices` (nearest neighbours, causal at the edge: only frames received before the anchor).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import nn

from edgeray.nn.models import EdgeNet, ModelConfig


def shift_onto_anchor(values: torch.Tensor, offsets_px: torch.Tensor) -> torch.Tensor:
    """Move windows onto their anchor's grid.

    Args:
        values: ``(B, K, C, H, W)`` real maps on each member's probe-centred grid.
        offsets_px: ``(B, K, 2)`` member position minus anchor position, object pixels ``[y, x]``.

    Returns:
        ``(B, K, C, H, W)``: pixel ``(i, j)`` holds the member's map at ``(i - oy, j - ox)`` (bilinear; 0 outside),
        i.e. the same object point as the anchor's pixel ``(i, j)``.
    """
    b, k, c, height, width = values.shape
    ys = (2 * (torch.arange(height, dtype=values.dtype) + 0.5) / height - 1)[None, :, None]
    xs = (2 * (torch.arange(width, dtype=values.dtype) + 0.5) / width - 1)[None, None, :]
    oy = offsets_px[..., 0].reshape(-1, 1, 1).to(values.dtype) * (2.0 / height)
    ox = offsets_px[..., 1].reshape(-1, 1, 1).to(values.dtype) * (2.0 / width)
    grid = torch.stack([(xs - ox).expand(-1, height, width), (ys - oy).expand(-1, height, width)], dim=-1)
    moved = nn.functional.grid_sample(values.reshape(b * k, c, height, width), grid, mode="bilinear",
                                      padding_mode="zeros", align_corners=False)  # fmt: skip
    return moved.reshape(b, k, c, height, width)


class GroupNet(nn.Module):
    """A group of frames -> the anchor's object window (see the module docstring).

    Args:
        config: the architecture; ``kind`` ``group``, ``group_size`` the default ``K`` (any ``K`` runs),
            ``fusion_width`` the real-space network's channels; the rest as for the edge model.
        probe: ``(H, W)`` complex probe; default the one ``config`` names.

    ``forward(frames, offsets_px)``: ``frames`` ``(B, K, H, W)`` normalized (as :func:`normalize_frames` makes
    them, anchor first), ``offsets_px`` ``(B, K, 2)`` float -> ``(amplitude, phase)`` each ``(B, 1, H, W)``.
    """

    takes_groups = True

    def __init__(self, config: ModelConfig, probe: torch.Tensor | None = None):
        super().__init__()
        self.frame = EdgeNet(config, probe)
        width = config.fusion_width
        self.fuse = nn.Sequential(
            nn.Conv2d(5, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2, 3, padding=1),
        )  # fmt: skip
        nn.init.zeros_(self.fuse[-1].weight)  # starts as the weighted mean of the group
        nn.init.zeros_(self.fuse[-1].bias)

    def set_probe(self, probe: torch.Tensor) -> None:
        self.frame.set_probe(probe)

    def complex_probe(self) -> torch.Tensor:
        return self.frame.complex_probe()

    @property
    def probe(self) -> torch.Tensor:
        return self.frame.probe

    def frame_patches(self, frames: torch.Tensor) -> torch.Tensor:
        """``(B, K, H, W)`` normalized frames -> their single-frame patches ``(B, K, 2, H, W)`` (real, imaginary)."""
        b, k, height, width = frames.shape
        amplitude, phase = self.frame(frames.reshape(b * k, 1, height, width))
        return torch.cat([amplitude * torch.cos(phase), amplitude * torch.sin(phase)], 1).reshape(
            b, k, 2, height, width
        )

    def fuse_patches(self, patches: torch.Tensor, offsets_px: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The group's output from its members' patches ``(B, K, 2, H, W)`` and offsets ``(B, K, 2)``."""
        b, k, _, height, width = patches.shape
        power = self.frame.probe.square().sum(0)
        weight = (power / power.max())[None, None, None].expand(b, k, 1, height, width)
        maps = torch.cat([patches, weight], 2)
        if k > 1:  # the anchor stays where it is; only its neighbours move
            maps = torch.cat([maps[:, :1], shift_onto_anchor(maps[:, 1:], offsets_px[:, 1:])], 1)
        moved = maps
        re, im, w = moved[:, :, 0], moved[:, :, 1], moved[:, :, 2]
        anchor_re, anchor_im = re[:, :1], im[:, :1]
        # each member's constant phase turned to the anchor's (no gradient through the turn, as in stitching)
        with torch.no_grad():
            dot_re = (w[:, :1] * w * (anchor_re * re + anchor_im * im)).sum((2, 3), keepdim=True)
            dot_im = (w[:, :1] * w * (anchor_im * re - anchor_re * im)).sum((2, 3), keepdim=True)
            norm = torch.sqrt(dot_re.square() + dot_im.square()).clamp_min(1e-12)
            cos, sin = dot_re / norm, dot_im / norm
        turned_re, turned_im = re * cos - im * sin, re * sin + im * cos
        # where no member's probe lit a pixel, the anchor's own patch stands (a group of one is the anchor)
        floor = 1e-3
        total = w.sum(1) + floor
        mean_re = ((w * turned_re).sum(1) + floor * re[:, 0]) / total
        mean_im = ((w * turned_im).sum(1) + floor * im[:, 0]) / total
        coverage = w[:, 1:].sum(1)
        inputs = torch.stack([re[:, 0], im[:, 0], mean_re, mean_im, coverage], 1)
        correction = self.fuse(inputs)
        out_re, out_im = mean_re[:, None] + correction[:, :1], mean_im[:, None] + correction[:, 1:]
        amplitude = torch.sqrt(out_re.square() + out_im.square() + 1e-12)
        return amplitude, torch.atan2(out_im, out_re)

    def forward(self, frames: torch.Tensor, offsets_px: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fuse_patches(self.frame_patches(frames), offsets_px)


class AloneGroup(nn.Module):
    """A group model run on single frames, each as a group of one (the single-frame interface:
    ``(N, 1, H, W)`` -> ``(amplitude, phase)``): how a frame with no neighbour yet is inverted."""

    def __init__(self, model: GroupNet):
        super().__init__()
        self.group = model

    def complex_probe(self) -> torch.Tensor:
        return self.group.complex_probe()

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        offsets = torch.zeros(frames.shape[0], 1, 2, dtype=frames.dtype, device=frames.device)
        return self.group(frames, offsets)


def group_indices(positions_px: np.ndarray, group_size: int, radius_px: float, causal: bool = False) -> np.ndarray:
    """``(N, K)`` int64 frame indices of each frame's group: itself first, then its nearest frames within
    ``radius_px`` of ``positions_px`` ``(N, 2)`` (``causal``: only frames before it in the given order, as the edge
    receives them). Where fewer qualify, the frame stands in for the missing members (offset 0)."""
    n = len(positions_px)
    groups = np.repeat(np.arange(n)[:, None], group_size, axis=1)
    if group_size == 1 or n < 2:
        return groups
    if not causal:
        k = min(group_size, n)
        distances, neighbours = cKDTree(positions_px).query(positions_px, k=k)
        groups[:, :k] = np.where(distances <= radius_px, neighbours, np.arange(n)[:, None])
        groups[:, 0] = np.arange(n)
        return groups
    block = 512
    for start in range(0, n, block):
        anchors = np.arange(start, min(start + block, n))
        distance = np.linalg.norm(positions_px[anchors, None] - positions_px[None, : anchors[-1] + 1], axis=-1)
        distance[np.arange(anchors[-1] + 1)[None, :] >= anchors[:, None]] = np.inf  # only frames received before
        take = min(group_size - 1, anchors[-1] + 1)
        nearest = np.argsort(distance, axis=1)[:, :take]
        near = np.take_along_axis(distance, nearest, 1) <= radius_px
        groups[anchors, 1 : 1 + take] = np.where(near, nearest, anchors[:, None])
    return groups
