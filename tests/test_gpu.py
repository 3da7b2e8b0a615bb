"""GPU checks (skipped without CUDA): reference parity under fp16/bf16 autocast, full-size smoke runs.

Tolerance under autocast: relative error ||ours - expected|| / ||expected|| below 2e-2 for
float16 and 5e-2 for bfloat16 (8 and 7 fewer mantissa bits than float32: single layers land
near 1e-3 and 1e-2, the 5-step sampler and refinement cases accumulate more).
The aesthetic embedder is compared on its score only: under fp16 autocast the score is rounded
to float16 before its x100 timestep embedding (as in the official release), which moves that
embedding by design; the float32 reference does not round.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import ROOT, redraw_zero_parameters
from parity_runners import RUNNERS
from test_reference_parity import CASES, load_case

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
TOLERANCE = {torch.float16: 2e-2, torch.bfloat16: 5e-2}


def on_cuda(tensors: dict) -> dict:
    return {k: v.cuda() for k, v in tensors.items()}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_reference_case_under_autocast(case, dtype):
    tensors = on_cuda(load_case(case))
    with torch.device("cuda"), torch.autocast("cuda", dtype=dtype):
        ours = RUNNERS[case](CASES[case]["config"], tensors, lambda name: on_cuda(load_case(name)), CASES)
    for key, value in ours.items():
        expected = tensors[f"out.{key}"].double().cpu()
        value = value.double().cpu()
        if case == "aesthetic_embedder":
            value, expected = value[:, :1], expected[:, :1]
        error = (value - expected).norm() / expected.norm().clamp_min(1e-12)
        assert torch.isfinite(value).all(), f"{case}/{key}: non-finite"
        assert error < TOLERANCE[dtype], f"{case}/{key}: relative error {error:.2e} ({dtype})"


@pytest.mark.parametrize("stage", [1, 2])
def test_full_size_sampling_smoke(stage):
    from sgm.config import build_model, load_config
    from sgm.pipelines.sampling import generate_orbit, refine_orbit

    config = load_config(ROOT / "configs" / f"inference-v0{stage}.yaml")
    with torch.device("cuda"):
        model = build_model(config, random_pretrained_encoders=True)
    model = model.half().eval()
    size, generator = model.resolution, torch.Generator("cuda").manual_seed(0)
    if stage == 1:
        frames = generate_orbit(model, torch.rand(3, size, size) * 2 - 1, 10.0, generator, num_steps=2)
    else:
        frames = refine_orbit(model, torch.rand(16, 3, size, size) * 2 - 1, 10.0, generator, num_steps=2)
    assert frames.shape == (16, 3, size, size)
    assert torch.isfinite(frames).all()


TINY_V01 = ROOT / "configs" / "tiny-train-v01.yaml"
TINY_V02 = ROOT / "configs" / "tiny-train-v02.yaml"


def tiny_graphed_stage1(*overrides: str, config_path: Path = TINY_V01):
    """The tiny stage-1 (or ``config_path``'s) training model on the GPU with ``cuda_graph_training``
    and no all-zero UNet parameters."""
    from sgm.config import build_model, load_config

    config = load_config(config_path, ["model.params.cuda_graph_training=true", *overrides])
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = build_model(config).train()
    redraw_zero_parameters(model.model)
    return model


def orbit_batch(model, clips: int = 1, device: str = "cuda") -> dict:
    generator = torch.Generator().manual_seed(0)
    size, frames = model.resolution, model.num_samples
    video = torch.rand(clips, 3, frames, size, size, generator=generator) * 2 - 1
    return {"video": video.to(device), "elevation": torch.full((clips,), 10.0, device=device),
            "caption": ["an object"] * clips}


@pytest.mark.parametrize("use_checkpoint", [False, True], ids=["plain", "checkpointed"])
def test_graphed_training_loss_gives_the_eager_loss_and_gradients(use_checkpoint):
    model = tiny_graphed_stage1(f"model.params.network_config.params.use_checkpoint={str(use_checkpoint).lower()}")
    batch = orbit_batch(model)
    model.training_loss(batch).backward()  # captures, then replays
    assert model._graphed_loss.captured
    model.zero_grad(set_to_none=True)

    def loss_and_grads(loss_fn):
        torch.manual_seed(7)  # the graph draws from the default generator as the eager step does
        loss = loss_fn(batch)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.trained_parameters()])
        model.zero_grad(set_to_none=True)
        return loss.detach(), grads

    graphed_loss, graphed_grads = loss_and_grads(model.training_loss)
    eager_loss, eager_grads = loss_and_grads(model.shared_step)
    assert eager_grads.norm() > 0
    torch.testing.assert_close(graphed_loss, eager_loss, rtol=1e-5, atol=0)
    assert (graphed_grads - eager_grads).norm() / eager_grads.norm() < 1e-4
    # each replay draws new noise levels, noise and condition dropout
    assert model.training_loss(batch).item() != model.training_loss(batch).item()
    # the graph's inputs are the prepared batch (after add_custom_cond): its keys are named
    with pytest.raises(ValueError, match="captured for batches of another form: 'caption'.*'cond_frames'"):
        model.training_loss(orbit_batch(model, clips=2))
    old_storage = [p.data for p in model.parameters()]  # kept, so the new storage cannot take its addresses
    model.cpu().cuda()
    with pytest.raises(RuntimeError, match="moved or replaced since its capture"):
        model.training_loss(batch)
    del old_storage


def test_graphed_stage2_training_loss_gives_the_eager_loss_with_the_degradation_outside_the_graph(tmp_path):
    from test_training import SIZE, first_batch, tiny_config

    from conftest import render_orbits
    from sgm.config import build_model

    config = tiny_config(TINY_V02, render_orbits(tmp_path, SIZE), "model.params.cuda_graph_training=true")
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = build_model(config).train()
    redraw_zero_parameters(model.model)
    assert model.degradation is not None
    batch = {key: value.cuda() if torch.is_tensor(value) else value for key, value in first_batch(config).items()}
    model.training_loss(batch).backward()  # captures, then replays
    assert model._graphed_loss.captured
    model.zero_grad(set_to_none=True)
    losses = []
    for loss_fn in (model.training_loss, model.shared_step):
        torch.manual_seed(7)  # the same degradation and the same noise
        losses.append(loss_fn(batch).detach())
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=0)


def test_cuda_graph_training_fits_under_lightning():
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    model = tiny_graphed_stage1()
    model.learning_rate = 1e-3
    before = {name: p.detach().cpu() for name, p in model.model.named_parameters()}

    class Replayed(pl.Callback):
        """Records at every step whether the loss came from a captured graph."""

        def __init__(self):
            self.steps = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.steps.append(pl_module._graphed_loss is not None and pl_module._graphed_loss.captured)

    replayed = Replayed()
    trainer = pl.Trainer(accelerator="gpu", devices=1, max_steps=3, precision="bf16-mixed", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[replayed])
    batches = [orbit_batch(model, device="cpu") for _ in range(3)]
    trainer.fit(model, train_dataloaders=DataLoader(batches, batch_size=None))
    assert trainer.global_step == 3 and replayed.steps == [True] * 3
    assert model._graphed_loss is None  # dropped when fitting ended (Lightning then moves the model)
    after = {name: p.detach().cpu() for name, p in model.model.named_parameters()}
    assert all(torch.isfinite(p).all() for p in after.values())
    assert any(not torch.equal(after[name], before[name]) for name in before)


def test_the_vae_group_norm_of_one_1024_px_frame_is_the_float32_result_rounded_once():
    """FewRowsGroupNorm's reduction path (taken for one half-precision 1024 px frame on CUDA) against
    float64: within two units in the last place of float16 at the output's magnitude, as the native
    kernel."""
    import torch.nn.functional as F

    from sgm.modules.diffusionmodules.model import vae_norm
    from sgm.modules.diffusionmodules.util import group_norm_by_reductions

    gen = torch.Generator("cuda").manual_seed(0)
    norm = vae_norm(128).cuda().half()
    with torch.no_grad():
        norm.weight.normal_(1, 0.3, generator=gen)
        norm.bias.normal_(0, 0.3, generator=gen)
        x = (3 * torch.randn(1, 128, 1024, 1024, device="cuda", generator=gen) + 2).half()
        out = norm(x)
        torch.testing.assert_close(out, group_norm_by_reductions(x, 32, norm.weight, norm.bias, norm.eps), rtol=0, atol=0)
        exact = F.group_norm(x.double(), 32, norm.weight.double(), norm.bias.double(), norm.eps)
        tolerance = 2 * torch.finfo(torch.float16).eps * exact.abs().max().item()
        native = F.group_norm(x, 32, norm.weight, norm.bias, norm.eps)
        assert (native.double() - exact).abs().max() <= tolerance
        assert (out.double() - exact).abs().max() <= tolerance
