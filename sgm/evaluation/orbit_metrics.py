"""Per-view scores of a generated orbit against ground truth, the two image baselines, and summaries.

All views are uint8 RGB ``(V, H, W, 3)`` on a white background, compared at one size.

* PSNR (dB) and SSIM: :func:`sgm.recon.metrics.psnr` (float64) / :func:`~sgm.recon.metrics.ssim`
  (float32) on values / 255. PSNR of identical views is capped at :data:`PSNR_CAP_DB` (the MSE floor of
  :func:`~sgm.recon.metrics.psnr`, 1e-12), so means stay finite.
* Silhouette IoU: the foreground of a view is every pixel with some channel at or below
  :data:`~sgm.common.images.WHITE_THRESHOLD` (220), the rule the pipeline's masks use
  (:func:`~sgm.common.images.foreground_masks`), applied alike to the generated and the
  ground-truth views; IoU = |A and B| / |A or B| per view, 1 when both are empty.
* Means over an orbit skip the first :data:`SKIPPED_FRAMES` frames: frame 0 is the input view
  (given to the model; the copied-input baseline reproduces it exactly). Per-frame values keep
  every frame.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from sgm.common.images import WHITE_THRESHOLD, foreground_masks
from sgm.data.video_dataset import resize_uint8
from sgm.recon.metrics import psnr, ssim

PSNR_CAP_DB = 120.0
SKIPPED_FRAMES = 1
IMAGE_METRICS = ("psnr", "ssim", "iou")
FOREGROUND_RULE = (f"foreground = some channel <= {WHITE_THRESHOLD} (of 255), in generated and ground-truth views "
                   "alike (sgm.common.images.foreground_masks)")


def silhouette_iou(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """IoU of boolean masks ``(V, H, W)`` per view -> ``(V,)``; 1.0 where both masks are empty."""
    intersection = np.logical_and(pred, target).reshape(len(pred), -1).sum(axis=1)
    union = np.logical_or(pred, target).reshape(len(pred), -1).sum(axis=1)
    return np.where(union > 0, intersection / np.maximum(union, 1), 1.0)


def view_scores(pred: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
    """PSNR (dB), SSIM and silhouette IoU of each view pair, uint8 ``(V, H, W, 3)`` -> each ``(V,)``.

    Raises:
        ValueError: the two stacks differ in shape.
    """
    if pred.shape != target.shape:
        raise ValueError(f"views of shape {pred.shape} cannot be scored against ground truth of shape {target.shape}")
    p = torch.from_numpy(np.ascontiguousarray(pred)).float() / 255.0
    t = torch.from_numpy(np.ascontiguousarray(target)).float() / 255.0
    ssim_values = ssim(p.permute(0, 3, 1, 2), t.permute(0, 3, 1, 2)).double().numpy()  # float32: 4x faster
    return {"psnr": psnr(p, t), "ssim": ssim_values,
            "iou": silhouette_iou(foreground_masks(pred), foreground_masks(target))}


def orbit_summary(scores: dict[str, np.ndarray], skip: int = SKIPPED_FRAMES) -> dict:
    """Means over frames ``skip..V-1`` of :func:`view_scores`, and the per-frame values (all frames)."""
    summary = {name: float(np.mean(values[skip:])) for name, values in scores.items()}
    summary["per_frame"] = {name: [round(float(v), 6) for v in values] for name, values in scores.items()}
    return summary


def score_orbit(pred: np.ndarray, target: np.ndarray, skip: int = SKIPPED_FRAMES) -> dict:
    """:func:`orbit_summary` of :func:`view_scores`."""
    return orbit_summary(view_scores(pred, target), skip)


def copied_input(view: np.ndarray, count: int) -> np.ndarray:
    """The copied-input baseline: ``view`` ``(H, W, 3)`` repeated as every frame of an orbit ``(count, H, W, 3)``."""
    return np.repeat(view[None], count, axis=0)


def bicubic_upsample(views: np.ndarray, size: int) -> np.ndarray:
    """The stage-2 baseline: each view ``(V, h, w, 3)`` resized to ``size`` x ``size`` with PIL's bicubic filter."""
    return np.stack([resize_uint8(view, size, size, Image.Resampling.BICUBIC) for view in views])


def mean_std(values: list[float]) -> dict:
    """``{"mean", "std", "n"}`` over objects (population std, ddof 0); None for mean and std when empty."""
    if not values:
        return {"mean": None, "std": None, "n": 0}
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std()), "n": len(values)}
