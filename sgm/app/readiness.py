"""Whether a job's refined views can make a 3D model, said in the user's terms.

The 3D step separates the object from the background with the refined views' masks
(``second_step_video/masks``: white, R, G and B above 220, is background). A view whose mask
leaves (almost) no background gives the Gaussian fit no silhouette, and the reconstruction
refuses a mask that covers the whole image. Untrained models (the demo) output noise over the
whole frame, so every pixel counts as object: this is why step 3 cannot work on their views.
The app checks the masks itself, right after step 2 and before step 3, to say what to change
instead of reporting the reconstruction's message about masks.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..pipelines.outputs import OutputLayout
from ..recon.views import MASK_THRESHOLD

MIN_BACKGROUND = 0.01  # least fraction of background pixels in every view: below it the fit has no silhouette
MIN_OBJECT = 0.001     # least fraction of object pixels in every view
CHECKPOINT_ADVICE = ("A 3D model needs trained models: place the released checkpoints first_stage.pt and "
                     "second_stage.pt in ckpts/ (see ckpts/README.md) and restart the app.")
INPUT_ADVICE = ("Upload a picture of the object on a transparent background (RGBA PNG) or on plain white, with "
                "some margin around it, and run steps 1 and 2 again.")


@dataclass(frozen=True)
class MaskSummary:
    """Per refined view, the fraction of its pixels that count as object."""

    object_fractions: tuple[float, ...]


def summarise_masks(job_folder: Path) -> MaskSummary | None:
    """Object fractions of the refined views' masks; None when step 2's masks are absent or unreadable
    (the 3D step then reports what is missing itself)."""
    masks = sorted(OutputLayout(job_folder).stage2_masks.glob("mask_*.png"))
    if not masks:
        return None
    fractions = []
    for path in masks:
        try:
            with Image.open(path) as mask:
                pixels = np.asarray(mask.convert("L"))
        except (UnidentifiedImageError, OSError):
            return None
        fractions.append(float((pixels > MASK_THRESHOLD * 255).mean()))
    return MaskSummary(tuple(fractions))


def problem_for_3d(summary: MaskSummary | None, untrained: bool) -> str | None:
    """Why step 3 cannot use these views and what to do, or None when they look usable."""
    if summary is None:
        return None
    fractions = np.asarray(summary.object_fractions)
    no_background = np.flatnonzero(fractions > 1.0 - MIN_BACKGROUND)
    no_object = np.flatnonzero(fractions < MIN_OBJECT)
    if untrained and (no_background.size or no_object.size):
        return ("Step 3 cannot make a 3D model from these views: the demo models are untrained, so their refined "
                f"views are noise with no white background ({no_background.size} of {fractions.size} views are "
                f"more than {1 - MIN_BACKGROUND:.0%} object), and the 3D step cannot tell an object from its "
                f"background. {CHECKPOINT_ADVICE}")
    if no_background.size:
        view = int(no_background[0])
        return (f"Step 3 cannot make a 3D model from these views: refined view {view} has almost no white "
                f"background ({fractions[view]:.1%} of it counts as object; {no_background.size} of {fractions.size} "
                f"views are like this), so the 3D step cannot tell the object from the background. {INPUT_ADVICE}")
    if no_object.size:
        view = int(no_object[0])
        return (f"Step 3 cannot make a 3D model from these views: refined view {view} is all white (no object "
                f"found in it; {no_object.size} of {fractions.size} views are like this). Upload a picture where "
                "the object is in focus and fills a good part of the frame, and run steps 1 and 2 again.")
    return None
