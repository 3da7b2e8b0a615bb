"""GeneralConditioner routing, dropout and unconditional batches; the scalar embedder."""
from __future__ import annotations

import pytest
import torch

from sgm.modules import GeneralConditioner
from sgm.modules.diffusionmodules.util import timestep_embedding
from sgm.modules.encoders.base import AbstractEmbModel
from sgm.modules.encoders.modules import ConcatTimestepEmbedderND
from sgm.util import ConfigError


class TokenEmbedder(AbstractEmbModel):
    """Test input: (B, D) -> (B, 1, D) crossattn tokens through a linear layer."""

    def __init__(self, dim: int = 4):
        super().__init__()
        self.proj = torch.nn.Linear(dim, dim)

    def forward(self, x):
        return self.proj(x)[:, None]


class FrameEmbedder(AbstractEmbModel):
    """Test input: (N, C, H, W) -> itself plus one (a concat output)."""

    def forward(self, x):
        return x + 1.0


def _node(target, key, **extra):
    node = {"target": target, "input_key": key}
    node.update(extra)
    return node


TIMESTEP = "sgm.modules.encoders.modules.ConcatTimestepEmbedderND"


def make_conditioner(ucg_rate=0.0, trainable=False):
    return GeneralConditioner([
        _node("test_conditioner.TokenEmbedder", "image", ucg_rate=ucg_rate, is_trainable=trainable),
        _node(TIMESTEP, "elevation", params={"outdim": 8}),
        _node("test_conditioner.FrameEmbedder", "frames", ucg_rate=ucg_rate),
        _node(TIMESTEP, "cond_aug", params={"outdim": 6}),
    ])


def make_batch(clips=2, frames=3):
    return {
        "image": torch.randn(clips, 4),
        "elevation": torch.tensor([10.0, -10.0][:clips]),
        "frames": torch.randn(clips * frames, 2, 5, 5),
        "cond_aug": torch.full((clips,), 0.02),
    }


def test_outputs_are_routed_by_rank_and_concatenated_in_order():
    conditioner = make_conditioner()
    batch = make_batch()
    out = conditioner(batch)
    assert set(out) == {"vector", "crossattn", "concat"}
    assert out["crossattn"].shape == (2, 1, 4)
    assert out["vector"].shape == (2, 8 + 6)
    torch.testing.assert_close(out["vector"][:, :8], timestep_embedding(batch["elevation"], 8))
    torch.testing.assert_close(out["vector"][:, 8:], timestep_embedding(batch["cond_aug"], 6))
    torch.testing.assert_close(out["concat"], batch["frames"] + 1)


def test_unconditional_zeroes_forced_keys_and_keeps_the_rest():
    conditioner = make_conditioner(ucg_rate=0.5)
    conditioner.train()
    batch = make_batch()
    c, uc = conditioner.get_unconditional_conditioning(batch, ["frames", "image"])
    assert torch.count_nonzero(uc["concat"]) == 0 and torch.count_nonzero(uc["crossattn"]) == 0
    torch.testing.assert_close(uc["vector"], c["vector"])
    # no dropout in either half even though the conditioner is in training mode with ucg_rate 0.5
    torch.testing.assert_close(c["concat"], batch["frames"] + 1)
    assert conditioner.training


class CountingFrameEmbedder(FrameEmbedder):
    """FrameEmbedder that counts its calls (the encoders it stands for cost seconds at 1024 px)."""

    calls = 0

    def forward(self, x):
        CountingFrameEmbedder.calls += 1
        return super().forward(x)


def test_unconditional_half_runs_each_embedder_once_and_equals_two_separate_calls():
    conditioner = GeneralConditioner([
        _node("test_conditioner.TokenEmbedder", "image", ucg_rate=0.1),
        _node(TIMESTEP, "elevation", params={"outdim": 8}),
        _node("test_conditioner.CountingFrameEmbedder", "frames", ucg_rate=0.1),
    ]).eval()
    batch = make_batch()
    CountingFrameEmbedder.calls = 0
    c, uc = conditioner.get_unconditional_conditioning(batch, ["frames", "image"])
    assert CountingFrameEmbedder.calls == 1
    separate = (conditioner(batch), conditioner(batch, ["frames", "image"]))
    for shared, alone in zip((c, uc), separate):
        assert set(shared) == set(alone)
        for key in alone:
            torch.testing.assert_close(shared[key], alone[key], rtol=0, atol=0)
    assert torch.count_nonzero(uc["concat"]) == 0 and torch.count_nonzero(c["concat"]) > 0


def test_training_dropout_drops_whole_rows_at_the_configured_rate():
    conditioner = make_conditioner(ucg_rate=0.3).train()
    batch = make_batch(clips=2, frames=500)
    out = conditioner(batch, generator=torch.Generator().manual_seed(0))
    concat = out["concat"]
    dropped = (concat.flatten(1).abs().sum(1) == 0).float()
    assert 0.25 < dropped.mean().item() < 0.35  # one draw per frame row for concat outputs
    kept = dropped == 0
    torch.testing.assert_close(concat[kept], batch["frames"][kept] + 1)


def test_eval_mode_has_no_dropout():
    conditioner = make_conditioner(ucg_rate=0.9).eval()
    batch = make_batch()
    torch.testing.assert_close(conditioner(batch)["concat"], batch["frames"] + 1)


def test_frozen_embedders_stay_frozen_and_in_eval():
    conditioner = make_conditioner(trainable=False)
    conditioner.train()
    token = conditioner.embedders[0]
    assert not token.training
    assert all(not p.requires_grad for p in token.parameters())
    assert conditioner(make_batch())["crossattn"].grad_fn is None


def test_trainable_embedder_gets_gradients():
    conditioner = make_conditioner(trainable=True).train()
    conditioner(make_batch())["crossattn"].sum().backward()
    assert conditioner.embedders[0].proj.weight.grad is not None


def test_missing_batch_key_is_named():
    batch = make_batch()
    del batch["elevation"]
    with pytest.raises(KeyError, match="elevation"):
        make_conditioner()(batch)


def test_config_errors_are_readable():
    with pytest.raises(ConfigError, match="input_key"):
        GeneralConditioner([{"target": TIMESTEP, "params": {"outdim": 4}}])
    with pytest.raises(ConfigError, match="not an AbstractEmbModel"):
        GeneralConditioner([{"target": "torch.nn.Identity", "input_key": "x"}])


def test_concat_timestep_embedder_multi_dim():
    embedder = ConcatTimestepEmbedderND(outdim=10)
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    out = embedder(values)
    assert out.shape == (2, 20)
    torch.testing.assert_close(out[1, 10:], timestep_embedding(torch.tensor([4.0]), 10)[0])
    # integer elevations in degrees embed like their float values
    torch.testing.assert_close(embedder(torch.tensor([30])), embedder(torch.tensor([30.0])))
