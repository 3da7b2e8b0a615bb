"""CUDA-graphed training loss: what a graph fixes of a batch, and the errors raised before any
capture. Capture and replay themselves are checked on the GPU (test_gpu.py)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from sgm.models.cuda_graph import GraphedLoss, batch_signature, describe_difference


def clip_batch(clips: int = 1, dtype: torch.dtype = torch.float32, **changes) -> dict:
    batch = {"video": torch.zeros(clips, 3, 4, 8, 8, dtype=dtype), "num_video_frames": 4,
             "caption": ["a chair"] * clips}
    return {**batch, **changes}


def test_signature_fixes_tensor_shapes_dtypes_and_scalar_values():
    captured = batch_signature(clip_batch())
    assert batch_signature(clip_batch()) == captured
    assert batch_signature(clip_batch(clips=2)) != captured
    assert batch_signature(clip_batch(dtype=torch.float16)) != captured
    assert batch_signature(clip_batch(num_video_frames=3)) != captured
    assert batch_signature({**clip_batch(), "extra": torch.zeros(1)}) != captured


def test_signature_ignores_the_contents_of_other_values_but_not_their_length():
    captured = batch_signature(clip_batch())
    assert batch_signature(clip_batch(caption=["a lamp"])) == captured
    assert batch_signature(clip_batch(caption=["a lamp", "a cup"])) != captured


def test_difference_names_the_changed_keys_only():
    message = describe_difference(batch_signature(clip_batch()), batch_signature(clip_batch(clips=2)))
    assert "'video'" in message and "(1, 3, 4, 8, 8)" in message and "(2, 3, 4, 8, 8)" in message
    assert "'caption'" in message  # two captions instead of one
    assert "num_video_frames" not in message
    message = describe_difference(batch_signature(clip_batch()), batch_signature(clip_batch(num_video_frames=3)))
    assert message == "'num_video_frames': captured (4,), now (3,)"


def test_graphed_loss_refuses_host_tensors_before_capturing():
    graphed = GraphedLoss(nn.Linear(2, 1), lambda batch: batch["x"].sum())
    with pytest.raises(ValueError, match=r"on a CUDA device; \['x'\] are not"):
        graphed({"x": torch.zeros(2), "n": 3})
    assert not graphed.captured
