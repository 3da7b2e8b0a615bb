"""Training: loss falls on a fixed batch (both stages), parameter selection, the trainer config,
and ``train_ddp_spawn.py`` end to end with 2 CPU processes (DDP over gloo) and resume.

Data: two procedural objects rendered at 32x32 by ``scripts/render_synthetic_orbits.py``.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import redraw_zero_parameters, render_orbits
from torch._dynamo.utils import counters
from torch.utils.data import DataLoader

from sgm.callbacks import ImageLogger
from sgm.config import build_model, load_config
from sgm.models.diffusion import SHARED_STEP_PHASES, video_to_frames
from sgm.modules.attention import BasicTransformerBlock
from sgm.modules.diffusionmodules.openaimodel import ResBlock
from sgm.modules.diffusionmodules.util import compile_block_bodies
from sgm.modules.video_attention import VideoTransformerBlock
from sgm.training import (
    TrainingConfigError,
    TrainOptions,
    parse_devices,
    rank_seed,
    resolve_resume,
    run,
    scaled_learning_rate,
    translate_trainer_options,
)
from sgm.util import ConfigError, instantiate_from_config

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
TINY_V01 = ROOT / "configs" / "tiny-train-v01.yaml"
TINY_V02 = ROOT / "configs" / "tiny-train-v02.yaml"
SIZE = 32
# Fixed-batch loss: evaluated at sigma 1 and at e (the median of the training distribution,
# ln sigma ~ N(1.0, 1.6^2)), with fixed noise, condition noise and VAE samples.
EVAL_SIGMAS = (1.0, math.e)
TRAIN_STEPS = 30
LEARNING_RATE = 2e-3
REQUIRED_DROP = 0.30


class ParameterChecksum(pl.Callback):
    """Test-only callback: each rank writes ``<tag>-rank<r>.json`` with its global steps at
    start and end, the captions it trained on and a SHA-256 of its trained parameters."""

    def __init__(self, out_dir: str, tag: str):
        super().__init__()
        self.out_dir, self.tag = Path(out_dir), tag
        self.start_step, self.captions = None, []

    def on_train_start(self, trainer, pl_module):
        self.start_step = trainer.global_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.captions.append(list(batch["caption"]))

    def on_train_end(self, trainer, pl_module):
        digest = hashlib.sha256()
        for name, param in sorted(pl_module.named_parameters()):
            if param.requires_grad:
                digest.update(name.encode())
                # bf16 weights (DeepSpeed) have no numpy type; float32 holds them exactly
                digest.update(param.detach().float().cpu().contiguous().numpy().tobytes())
        record = {"start": self.start_step, "end": trainer.global_step, "captions": self.captions,
                  "sha256": digest.hexdigest(), "world_size": trainer.world_size}
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"{self.tag}-rank{trainer.global_rank}.json").write_text(json.dumps(record))


@pytest.fixture(scope="module")
def orbit_folder(tmp_path_factory) -> Path:
    return render_orbits(tmp_path_factory.mktemp("orbits"), SIZE)


def data_overrides(folder: Path) -> list[str]:
    return [f"data.params.base_folder={folder}", f"data.params.width={SIZE}", f"data.params.height={SIZE}"]


def tiny_config(path: Path, folder: Path, *extra: str):
    config = load_config(path, [*data_overrides(folder), *extra])
    if config.model.target.endswith("Stage2VideoLDM"):
        # 32 px frames: the depth network gets 32 px instead of 64 / 2.
        config.model.params.conditioner_config.params.emb_models[2].params.scale_factor = 1.0
    return config


def first_batch(config) -> dict:
    data = instantiate_from_config(config.data)
    data.setup()
    return next(iter(data.train_dataloader()))


@torch.no_grad()
def fixed_loss(model, batch: dict) -> float:
    """Mean loss over :data:`EVAL_SIGMAS` with every random draw fixed (eval mode: no dropout)."""
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(1234)
    cond_batch = model.add_custom_cond(batch, infer=False, generator=generator)
    x0 = model.encode_first_stage(video_to_frames(cond_batch["video"]), generator=generator)
    cond = model.conditioner(cond_batch)
    noise = torch.randn(x0.shape, generator=generator)
    clips = batch["video"].shape[0]
    losses = [model.loss_fn(model.model, model.denoiser, cond, x0, cond_batch, sigmas=torch.full((clips,), s),
                            noise=noise).mean() for s in EVAL_SIGMAS]
    model.train(was_training)
    return float(torch.stack(losses).mean())


def fit_on_batch(model, batch: dict, steps: int, learning_rate: float, precision: str = "32-true") -> None:
    """``steps`` Lightning training steps, all on ``batch``."""
    model.learning_rate = learning_rate
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, precision=precision)
    trainer.fit(model, train_dataloaders=DataLoader([batch] * steps, batch_size=None))
    assert trainer.global_step == steps


@pytest.mark.slow
@pytest.mark.parametrize("config_path", [TINY_V01, TINY_V02], ids=["stage1", "stage2_degraded"])
def test_loss_falls_on_a_fixed_batch(orbit_folder: Path, config_path: Path):
    config = tiny_config(config_path, orbit_folder)
    pl.seed_everything(0, verbose=False)
    model = build_model(config)
    batch = first_batch(config)
    if "degradation_config" in config.model.params:
        assert model.degradation is not None and "kernel1s" in batch
    before = fixed_loss(model, batch)
    fit_on_batch(model, batch, TRAIN_STEPS, LEARNING_RATE)
    after = fixed_loss(model, batch)
    drop = 1.0 - after / before
    log.info("%s: fixed-batch loss %.4f -> %.4f (%.0f%% lower)", config_path.name, before, after, 100 * drop)
    assert drop >= REQUIRED_DROP, f"loss fell by {drop:.1%} ({before:.4f} -> {after:.4f}), expected >= 30%"


def test_trained_param_keys_freeze_the_rest(orbit_folder: Path):
    config = tiny_config(TINY_V01, orbit_folder, "model.params.trained_param_keys=[.time_stack.]")
    pl.seed_everything(0, verbose=False)
    model = build_model(config)
    batch = first_batch(config)
    selected = {n for n, _ in model.model.named_parameters() if ".time_stack." in n}
    assert selected and len(selected) < len(list(model.model.parameters()))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {f"model.{n}" for n in selected}
    model.learning_rate = 1e-3
    optimizer = model.configure_optimizers()
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for n, p in model.model.named_parameters() if n in selected}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fit_on_batch(model, batch, 2, 1e-3)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= {f"model.{n}" for n in selected}


@pytest.mark.parametrize("precision, frozen_dtype", [("bf16-mixed", torch.bfloat16), ("32-true", torch.float32)])
def test_frozen_modules_take_the_autocast_dtype_when_fitting_starts(orbit_folder: Path, precision: str,
                                                                    frozen_dtype: torch.dtype):
    config = tiny_config(TINY_V01, orbit_folder, "model.params.half_precision_frozen_modules=true")
    pl.seed_everything(0, verbose=False)
    model = build_model(config)
    batch = first_batch(config)
    before = {n: p.detach().clone() for n, p in model.model.named_parameters()}
    fit_on_batch(model, batch, 2, 1e-3, precision=precision)
    frozen = [p for module in model.frozen_modules() for p in module.parameters()]
    assert len(frozen) > 100 and {p.dtype for p in frozen} == {frozen_dtype}
    # the trained UNet keeps float32 master weights, and it trained
    assert {p.dtype for p in model.model.parameters()} == {torch.float32}
    assert all(torch.isfinite(p).all() for p in model.model.parameters())
    assert any(not torch.equal(p, before[n]) for n, p in model.model.named_parameters())


def test_compiled_block_bodies_give_the_eager_loss_and_gradients(orbit_folder: Path):
    config = tiny_config(TINY_V01, orbit_folder, "model.params.network_config.params.use_checkpoint=true")
    pl.seed_everything(0, verbose=False)
    model = build_model(config).train()
    redraw_zero_parameters(model.model)
    batch = first_batch(config)
    block_types = (ResBlock, BasicTransformerBlock, VideoTransformerBlock)
    blocks = [m for m in model.model.modules() if isinstance(m, block_types)]
    assert blocks and all(block.use_checkpoint for block in blocks)

    def loss_and_grads() -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)
        loss = model.shared_step(batch)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.trained_parameters()])
        model.zero_grad(set_to_none=True)
        return loss.detach(), grads

    eager_loss, eager_grads = loss_and_grads()
    assert eager_grads.abs().min() < eager_grads.abs().max() and eager_grads.norm() > 0
    torch._dynamo.reset()
    counters.clear()
    # aot_eager: dynamo capture and AOTAutograd's joint forward/backward graphs without codegen
    assert compile_block_bodies(model.model.diffusion_model, backend="aot_eager") == len(blocks)
    compiled_loss, compiled_grads = loss_and_grads()
    assert counters["stats"]["unique_graphs"] >= 6 and not counters["graph_break"]
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=0)
    assert ((compiled_grads - eager_grads).norm() / eager_grads.norm()) < 1e-5


@pytest.mark.parametrize("accumulate, message", [(2, "accumulate_grad_batches must be 1, not 2"),
                                                 (1, "needs a CUDA device; the model is on cpu")])
def test_cuda_graph_training_refuses_setups_it_cannot_replay(orbit_folder: Path, accumulate: int, message: str):
    config = tiny_config(TINY_V01, orbit_folder, "model.params.cuda_graph_training=true")
    model = build_model(config)
    batch = first_batch(config)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accumulate_grad_batches=accumulate)
    with pytest.raises(ConfigError, match=message):
        trainer.fit(model, train_dataloaders=DataLoader([batch], batch_size=None))
    assert trainer.global_step == 0


def test_the_training_loss_is_the_prepared_batch_loss(orbit_folder: Path):
    """shared_step = add_custom_cond (where the stage-2 degradation runs), then prepared_loss (what
    cuda_graph_training captures): same draws, same loss."""
    config = tiny_config(TINY_V02, orbit_folder)
    model = build_model(config).train()
    assert model.degradation is not None
    batch = first_batch(config)
    torch.manual_seed(3)
    whole = model.shared_step(batch)
    torch.manual_seed(3)
    parts = model.prepared_loss(model.add_custom_cond(batch, infer=False))
    assert torch.equal(whole, parts)


def test_training_step_phases_are_labelled_for_the_profiler(orbit_folder: Path):
    config = tiny_config(TINY_V01, orbit_folder)
    model = build_model(config).train()
    batch = first_batch(config)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model.shared_step(batch)
    labels = {event.key for event in prof.key_averages()}
    assert set(SHARED_STEP_PHASES) <= labels


def test_image_logger_schedule_and_stage2_log_images(orbit_folder: Path):
    logger = ImageLogger(batch_frequency=8, increase_log_steps=True, log_first_step=False)
    assert [i for i in range(20) if logger.should_log(i)] == [1, 2, 4, 8, 16]
    assert [i for i in range(20) if logger.should_log(i)] == [8, 16]  # early steps only once
    assert ImageLogger(batch_frequency=8, increase_log_steps=False, log_first_step=True).should_log(0)

    config = tiny_config(TINY_V02, orbit_folder)
    pl.seed_everything(0, verbose=False)
    model = build_model(config)
    batch = first_batch(config)
    images = model.log_images(batch, N=4, sample=True, ucg_keys=["cond_frames", "cond_frames_without_noise"],
                              num_steps=2)
    for key in ("inputs", "reconstructions", "conditions", "samples"):
        assert images[key].shape == (4, 3, SIZE, SIZE), key
    assert images["samples_video"].shape == (1, 3, 16, SIZE, SIZE)
    # Condition frames = (degraded) frames + cond_aug noise; frame 0 is not degraded.
    deviation = (images["conditions"] - images["inputs"]).abs().mean(dim=(1, 2, 3))
    assert deviation[1:].min() > 2 * deviation[0], f"stage 2 must log degraded frames 1.. ({deviation.tolist()})"
    with pytest.raises(ValueError, match="read by no embedder"):
        model.log_images(batch, N=2, ucg_keys=["nothing"], num_steps=1)


def test_trainer_options_translate_official_keys():
    options = translate_trainer_options({"gpus": "0,1,", "logger_refresh_rate": 50, "precision": 16,
                                         "max_epochs": 50}, has_validation=False)
    assert options == {"devices": [0, 1], "accelerator": "gpu", "log_every_n_steps": 50, "precision": "16-mixed",
                       "max_epochs": 50}
    assert translate_trainer_options({"accelerator": "ddp", "precision": "bf16"}, False) == {
        "accelerator": "auto", "strategy": "ddp", "precision": "bf16-mixed"}
    assert parse_devices("7,") == [7] and parse_devices("2") == 2 and parse_devices("auto") == "auto"
    bad = [({"check_val_every_n_epoch": 1}, "validation"), ({"strategy": "fsdp"}, "fsdp"),
           ({"precision": 8}, "precision"), ({"gpus": 1, "devices": 2}, "devices"),
           ({"progress_bar_refresh_rate": 5}, "progress_bar_refresh_rate")]
    if importlib.util.find_spec("deepspeed") is None:
        bad.append(({"strategy": "deepspeed_stage_2"}, "deepspeed"))
    for trainer_config, message in bad:
        with pytest.raises(TrainingConfigError, match=message):
            translate_trainer_options(trainer_config, has_validation=False)
    assert translate_trainer_options({"check_val_every_n_epoch": 2}, has_validation=True) == {
        "check_val_every_n_epoch": 2}


def test_learning_rate_seeds_and_resume_paths(tmp_path: Path):
    assert (rank_seed(23, 0, 0), rank_seed(23, 1, 0)) == (2300, 2301)  # official int(f"{seed}{rank:02d}")
    assert len({rank_seed(23, 0, 10), rank_seed(23, 1, 10), 2300, 2301}) == 4
    assert scaled_learning_rate(1e-5, batch_size=2, world_size=8, accumulate=1, scale_lr=True) == pytest.approx(1.6e-4)
    assert scaled_learning_rate(1e-5, batch_size=2, world_size=8, accumulate=3, scale_lr=False) == 1e-5
    run = tmp_path / "run"
    (run / "checkpoints" / "trainstep_checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (run / "checkpoints" / "trainstep_checkpoints" / "s.ckpt").write_bytes(b"x")
    assert resolve_resume(run) == (run, run / "checkpoints" / "last.ckpt")
    assert resolve_resume(run / "checkpoints" / "trainstep_checkpoints" / "s.ckpt")[0] == run.resolve()
    with pytest.raises(FileNotFoundError, match="missing"):
        resolve_resume(tmp_path / "missing")


@pytest.mark.parametrize("version", ["01", "02"])
def test_train_configs_match_inference_models(version: str):
    train = load_config(ROOT / "configs" / f"train-v{version}.yaml")
    infer = load_config(ROOT / "configs" / f"inference-v{version}.yaml")
    extra = {"trained_param_keys", "ckpt_path", "ckpt_allow_missing", "degradation_config",
             "half_precision_frozen_modules"}
    train_params = {k: v for k, v in train.model.params.items() if k not in extra}
    infer_params = {k: v for k, v in infer.model.params.items() if k != "trained_param_keys"}
    assert train_params == infer_params
    assert list(train.model.params.trained_param_keys) == ["all"]
    assert train.model.base_learning_rate == 1e-5
    trainer = dict(train.lightning.trainer)
    assert trainer["strategy"] == "deepspeed_stage_2"
    if importlib.util.find_spec("deepspeed") is None:
        with pytest.raises(TrainingConfigError, match="needs the 'deepspeed' package"):
            translate_trainer_options(trainer, has_validation=False)
        trainer["strategy"] = "ddp"
    options = translate_trainer_options(trainer, has_validation=False)
    assert options["precision"] == "16-mixed" and options["max_epochs"] == 50


def run_script(args: list[str], env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(ROOT / "train_ddp_spawn.py"), *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, f"train_ddp_spawn.py failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


@pytest.mark.slow
def test_ddp_two_cpu_processes_and_resume(orbit_folder: Path, tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k not in ("HI3D_RUN_TIMESTAMP", "LOCAL_RANK", "WORLD_SIZE")}
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), env.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    out = tmp_path / "ranks"
    checksum = [f"lightning.callbacks.checksum.target=test_training.ParameterChecksum",
                f"lightning.callbacks.checksum.params.out_dir={out}"]
    common = ["--train", "True", "--no-test", "True", "--accelerator", "cpu", "--devices", "2"]
    run_script(["--base", str(TINY_V01), *common, "--logdir", str(tmp_path / "logs"), "--name", "ddp",
                "--max_steps", "2", "lightning.trainer.strategy=ddp", *data_overrides(orbit_folder), *checksum,
                "lightning.callbacks.checksum.params.tag=first"], env)
    (logdir,) = (tmp_path / "logs").iterdir()
    first = [json.loads((out / f"first-rank{r}.json").read_text()) for r in range(2)]
    assert [(r["start"], r["end"], r["world_size"]) for r in first] == [(0, 2, 2), (0, 2, 2)]
    assert first[0]["sha256"] == first[1]["sha256"], "parameters differ between ranks"
    for epoch in range(2):  # 2 objects, 2 ranks, 1 clip each: the ranks see different objects
        names = {first[r]["captions"][epoch][0].rsplit("_", 1)[0] for r in range(2)}
        assert len(names) == 2
    checkpoints = sorted(p.relative_to(logdir) for p in (logdir / "checkpoints").rglob("*.ckpt"))
    assert checkpoints == [Path("checkpoints/last.ckpt")]
    assert len(list((logdir / "configs").glob("*-project.yaml"))) == 1
    logged = sorted(p.name for p in (logdir / "image_log" / "train").iterdir())
    assert any(n.startswith("samples_video_") and n.endswith(".mp4") for n in logged)
    assert any(n.startswith("samples_gs-") and n.endswith(".png") for n in logged)

    run_script(["--resume", str(logdir), *common, "--max_steps", "4", "lightning.callbacks.checksum.params.tag=second",
                "lightning.callbacks.image_logger.params.disabled=true"], env)
    second = [json.loads((out / f"second-rank{r}.json").read_text()) for r in range(2)]
    assert [(r["start"], r["end"]) for r in second] == [(2, 4), (2, 4)]
    assert second[0]["sha256"] == second[1]["sha256"] != first[0]["sha256"]
    assert sorted(p.relative_to(logdir) for p in (logdir / "checkpoints").rglob("*.ckpt")) == checkpoints
    state = torch.load(logdir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == 4
    assert list((tmp_path / "logs").iterdir()) == [logdir], "resume must reuse the run folder"

    # a checkpoint of 2 processes resumes in 1 (one process: the script's run in this process), and that one
    # again in 2
    for tag, devices, steps in (("third", "1", 5), ("fourth", "2", 6)):
        overrides = [f"lightning.callbacks.checksum.params.tag={tag}",
                     "lightning.callbacks.image_logger.params.disabled=true"]
        if devices == "1":
            run(TrainOptions(resume=str(logdir), train=True, no_test=True, accelerator="cpu", devices=devices,
                             max_steps=steps, overrides=overrides))
        else:
            run_script(["--resume", str(logdir), *common[:-1], devices, "--max_steps", str(steps), *overrides], env)
        ranks = [json.loads(path.read_text()) for path in sorted(out.glob(f"{tag}-rank*.json"))]
        assert [(r["start"], r["end"], r["world_size"]) for r in ranks] == [(steps - 1, steps, int(devices))] * int(devices)
        assert len({r["sha256"] for r in ranks}) == 1
