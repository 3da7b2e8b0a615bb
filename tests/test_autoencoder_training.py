"""Training the KL autoencoder: the loss functions against their formulas, the single-view data,
the training module (loss falls on a fixed batch, weights out of a checkpoint) and
``train_ddp_spawn.py --base configs/demo-train-autoencoder.yaml`` end to end with ``--resume``.

Data: two procedural objects rendered at 32x32 by ``scripts/render_synthetic_orbits.py``, read at
16x16 (the demo VAE is fully convolutional) so that a CPU step takes a fraction of a second.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import render_orbits
from torch.utils.data import DataLoader

import train_ddp_spawn
from sgm.config import build_model, load_config
from sgm.data.image_dataset import ImageDataset, OrbitViewDataset
from sgm.data.synthetic_orbits.spec import one_thread
from sgm.data.video_dataset import load_frame
from sgm.models.autoencoder import AutoencoderKL
from sgm.models.autoencoder_training import AUTOENCODER_PREFIX, AutoencoderTraining, autoencoder_state_dict
from sgm.modules.autoencoding.losses import finite_differences, gradient_l1, kl_per_value, reconstruction_l1
from sgm.modules.distributions.distributions import DiagonalGaussianDistribution
from sgm.util import ConfigError, instantiate_from_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "demo-train-autoencoder.yaml"
RENDER_SIZE, SIZE = 32, 16
VIEWS = 96
TRAIN_STEPS = 30
REQUIRED_DROP = 0.5


@pytest.fixture(scope="module")
def orbit_folder(tmp_path_factory) -> Path:
    return render_orbits(tmp_path_factory.mktemp("orbits"), RENDER_SIZE)


def data_overrides(folder: Path, batch_size: int = 4) -> list[str]:
    return [f"data.params.base_folder={folder}", f"data.params.width={SIZE}", f"data.params.height={SIZE}",
            f"data.params.batch_size={batch_size}", "data.params.num_workers=0", "data.params.views_per_object=2"]


def tiny_autoencoder_config() -> dict:
    ddconfig = {"attn_type": "vanilla-xformers", "double_z": True, "z_channels": 4, "resolution": SIZE,
                "in_channels": 3, "out_ch": 3, "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1,
                "attn_resolutions": [], "dropout": 0.0}
    return {"target": "sgm.models.autoencoder.AutoencoderKL", "params": {"embed_dim": 4, "ddconfig": ddconfig}}


# ----------------------------------------------------------------------------------------
# Loss functions


def test_reconstruction_l1_is_the_mean_absolute_error():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 2, 3, 5, 4, generator=generator).unbind(0)
    expected = np.abs(a.numpy().astype(np.float64) - b.numpy()).sum() / (2 * 3 * 5 * 4)
    assert reconstruction_l1(a, b).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="differ in shape"):
        reconstruction_l1(a, b[..., :3])


def test_gradient_l1_matches_the_finite_difference_formula():
    generator = torch.Generator().manual_seed(1)
    x_hat, x = torch.randn(2, 2, 3, 4, 5, generator=generator).unbind(0)
    xh, xx = x_hat.numpy().astype(np.float64), x.numpy().astype(np.float64)
    n, c, h, w = x.shape
    sum_x = sum(abs((xh[i, k, r, s + 1] - xh[i, k, r, s]) - (xx[i, k, r, s + 1] - xx[i, k, r, s]))
                for i in range(n) for k in range(c) for r in range(h) for s in range(w - 1))
    sum_y = sum(abs((xh[i, k, r + 1, s] - xh[i, k, r, s]) - (xx[i, k, r + 1, s] - xx[i, k, r, s]))
                for i in range(n) for k in range(c) for r in range(h - 1) for s in range(w))
    expected = 0.5 * (sum_x / (n * c * h * (w - 1)) + sum_y / (n * c * (h - 1) * w))
    assert gradient_l1(x_hat, x).item() == pytest.approx(expected, rel=1e-5)
    dx, dy = finite_differences(x)
    assert dx.shape == (n, c, h, w - 1) and dy.shape == (n, c, h - 1, w)
    # blind to a brightness offset, which the pixel L1 sees; sees an edge one pixel off
    assert gradient_l1(x + 0.3, x).item() == pytest.approx(0.0, abs=1e-6)
    assert reconstruction_l1(x + 0.3, x).item() == pytest.approx(0.3, rel=1e-5)
    edge = torch.zeros(1, 1, 6, 6)
    edge[..., 3:] = 1.0
    assert gradient_l1(edge.roll(1, dims=-1), edge).item() > 0.1
    with pytest.raises(ValueError, match="at least 2x2"):
        gradient_l1(x[..., :1, :], x[..., :1, :])


def test_kl_per_value_is_the_closed_form_kl_per_image_value():
    generator = torch.Generator().manual_seed(2)
    mean, logvar = torch.randn(3, 4, 2, 2, generator=generator), torch.randn(3, 4, 2, 2, generator=generator)
    posterior = DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1))
    reference = torch.distributions.kl_divergence(torch.distributions.Normal(mean, (0.5 * logvar).exp()),
                                                  torch.distributions.Normal(0.0, 1.0))
    image_values = 3 * 8 * 8
    expected = reference.sum(dim=(1, 2, 3)).mean() / image_values
    torch.testing.assert_close(kl_per_value(posterior, image_values), expected, rtol=1e-5, atol=1e-7)
    standard = DiagonalGaussianDistribution(torch.zeros(2, 8, 2, 2))
    assert kl_per_value(standard, image_values).item() == 0.0
    # mean 1, unit variance: 0.5 nats per latent element
    unit_shift = DiagonalGaussianDistribution(torch.cat([torch.ones(2, 4, 2, 2), torch.zeros(2, 4, 2, 2)], dim=1))
    assert kl_per_value(unit_shift, 16).item() == pytest.approx(0.5 * 16 / 16)
    with pytest.raises(ValueError, match="positive"):
        kl_per_value(standard, 0)


# ----------------------------------------------------------------------------------------
# Data


def test_single_views_are_reproducible_whole_views_on_white(orbit_folder: Path):
    dataset = OrbitViewDataset(orbit_folder, SIZE, SIZE, views_per_object=3, seed=5)
    assert len(dataset) == 2 * 3
    again = OrbitViewDataset(orbit_folder, SIZE, SIZE, views_per_object=3, seed=5)
    other_seed = OrbitViewDataset(orbit_folder, SIZE, SIZE, views_per_object=3, seed=6)
    items = [dataset[i] for i in range(40)]
    for index, item in enumerate(items):
        assert item["image"].shape == (3, SIZE, SIZE) and item["image"].dtype == torch.float32
        assert torch.equal(item["image"], again[index]["image"]) and item["caption"] == again[index]["caption"]
        name, position = item["caption"].rsplit("_", 1)
        obj = dataset.objects[index % 2]
        assert name == obj.name  # object i mod N
        # exactly the video dataset's decoding of that file: composited on white, resized, in [-1, 1]
        assert torch.equal(item["image"], load_frame(obj.files[int(position)], SIZE, SIZE)[0])
    assert items[0]["image"].min() >= -1 and items[0]["image"].max() == 1.0
    assert torch.equal(items[0]["image"][:, 0, 0], torch.ones(3))  # a corner is white background
    positions = [int(item["caption"].rsplit("_", 1)[1]) for item in items]
    assert len({p // 16 for p in positions}) >= 4, "views must come from every ring, not one"
    assert positions != [int(other_seed[i]["caption"].rsplit("_", 1)[1]) for i in range(40)]
    with pytest.raises(ValueError, match="views_per_object"):
        OrbitViewDataset(orbit_folder, SIZE, SIZE, views_per_object=0)


def test_image_data_module_batches(orbit_folder: Path):
    data = ImageDataset(str(orbit_folder), SIZE, SIZE, batch_size=3, views_per_object=3, seed=0)
    data.setup("fit")
    batches = list(data.train_dataloader())
    assert [b["image"].shape[0] for b in batches] == [3, 3]  # 2 objects x 3 views, one epoch
    assert batches[0]["image"].shape == (3, 3, SIZE, SIZE)
    assert sorted(c for b in batches for c in b["caption"]) == sorted(
        data.train_dataset[i]["caption"] for i in range(6))


# ----------------------------------------------------------------------------------------
# The training module


def test_training_module_checks_its_config_and_sums_its_terms():
    with pytest.raises(ConfigError, match="kl_weight=-1.0"):
        AutoencoderTraining(tiny_autoencoder_config(), kl_weight=-1.0)
    with pytest.raises(ConfigError, match="gradient_weight=nan"):
        AutoencoderTraining(tiny_autoencoder_config(), gradient_weight=float("nan"))
    with pytest.raises(ConfigError, match="expected sgm.models.autoencoder.AutoencoderKL"):
        AutoencoderTraining({"target": "torch.nn.Identity"})
    torch.manual_seed(0)
    model = AutoencoderTraining(tiny_autoencoder_config(), kl_weight=0.5, gradient_weight=2.0).eval()
    images = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    terms = model.losses(images, generator=torch.Generator().manual_seed(3))
    posterior = model.autoencoder.posterior(images)
    reconstruction = model.autoencoder.decode(posterior.sample(torch.Generator().manual_seed(3)))
    rec, grad = reconstruction_l1(reconstruction, images), gradient_l1(reconstruction, images)
    kl = kl_per_value(posterior, 3 * SIZE * SIZE)
    for name, value in (("rec_loss", rec), ("grad_loss", grad), ("kl_loss", kl), ("loss", rec + 2.0 * grad + 0.5 * kl)):
        torch.testing.assert_close(terms[name], value, msg=name)
    shown = model.log_images({"image": images}, N=1, sample=True)
    assert set(shown) == {"inputs", "reconstructions"}
    assert shown["inputs"].shape == shown["reconstructions"].shape == (1, 3, SIZE, SIZE)


def test_autoencoder_state_dict_loads_strictly_into_a_bare_autoencoder():
    torch.manual_seed(0)
    model = AutoencoderTraining(tiny_autoencoder_config()).eval()
    state = model.state_dict()
    assert all(key.startswith(AUTOENCODER_PREFIX) for key in state)
    weights = autoencoder_state_dict({"state_dict": state, "global_step": 7})
    assert weights == autoencoder_state_dict(state)
    bare = instantiate_from_config(tiny_autoencoder_config()).eval()
    assert type(bare) is AutoencoderKL
    bare.load_state_dict(weights, strict=True)
    images = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    torch.testing.assert_close(bare.decode(bare.posterior(images).mode()),
                               model.log_images({"image": images})["reconstructions"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="no key starts with 'autoencoder.'"):
        autoencoder_state_dict(bare.state_dict())


@torch.no_grad()
def fixed_loss(model: AutoencoderTraining, images: torch.Tensor) -> dict[str, float]:
    """The loss terms with the posterior sample fixed, in eval mode."""
    was_training = model.training
    model.eval()
    terms = model.losses(images, generator=torch.Generator().manual_seed(1234))
    model.train(was_training)
    return {name: float(value) for name, value in terms.items()}


@pytest.mark.slow
def test_loss_falls_on_a_fixed_batch(orbit_folder: Path):
    config = load_config(CONFIG, data_overrides(orbit_folder))
    pl.seed_everything(0, verbose=False)
    model = build_model(config)
    data = instantiate_from_config(config.data)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    before = fixed_loss(model, batch["image"])
    model.learning_rate = 2e-3
    with one_thread():
        trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=TRAIN_STEPS, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(model, train_dataloaders=DataLoader([batch] * TRAIN_STEPS, batch_size=None))
    assert trainer.global_step == TRAIN_STEPS
    after = fixed_loss(model, batch["image"])
    for name in ("loss", "rec_loss"):
        drop = 1.0 - after[name] / before[name]
        assert drop >= REQUIRED_DROP, f"{name} fell by {drop:.1%} ({before[name]:.4f} -> {after[name]:.4f})"


# ----------------------------------------------------------------------------------------
# train_ddp_spawn.py end to end


def run_script(args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """``train_ddp_spawn.py ARGS`` in this process, one torch thread (one process, no DDP: what the
    script's main does, without a second interpreter start-up); it exits (SystemExit) unless it succeeds."""
    for name in ("HI3D_RUN_TIMESTAMP", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "argv", ["train_ddp_spawn.py", *args])
    with one_thread():
        train_ddp_spawn.main()


def checkpoint_state(logdir: Path) -> dict:
    return torch.load(logdir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


@pytest.mark.slow
def test_train_script_trains_the_autoencoder_and_resumes(orbit_folder: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch):
    common = ["--train", "True", "--no-test", "True", "lightning.trainer.accelerator=cpu"]
    run_script(["--base", str(CONFIG), *common, "--logdir", str(tmp_path / "logs"), "lightning.trainer.max_steps=2",
                *data_overrides(orbit_folder)], monkeypatch)
    (logdir,) = (tmp_path / "logs").iterdir()
    first = checkpoint_state(logdir)
    assert first["global_step"] == 2
    weights = autoencoder_state_dict(first)
    config = load_config(CONFIG)
    bare = instantiate_from_config(config.model.params.autoencoder_config)
    bare.load_state_dict(weights, strict=True)  # every key of the demo VAE, nothing else
    assert set(first["state_dict"]) == {AUTOENCODER_PREFIX + key for key in bare.state_dict()}
    logged = sorted(p.name for p in (logdir / "image_log" / "train").iterdir())
    assert [n for n in logged if n.startswith("inputs_gs-000001")] and [
        n for n in logged if n.startswith("reconstructions_gs-000001")], logged

    run_script(["--resume", str(logdir), *common, "lightning.trainer.max_steps=3"], monkeypatch)
    second = checkpoint_state(logdir)
    assert second["global_step"] == 3
    assert list((tmp_path / "logs").iterdir()) == [logdir], "resume must reuse the run folder"
    changed = autoencoder_state_dict(second)
    assert any(not torch.equal(changed[key], weights[key]) for key in weights), "the resumed run did not train"
