"""Training runs: the Lightning 2 Trainer from a config's ``lightning`` section, plus the run folder.

A training config has ``model`` (with ``base_learning_rate``), ``data`` (a LightningDataModule
node) and ``lightning``:

- ``lightning.trainer``: keyword arguments of ``pytorch_lightning.Trainer``. The official
  (Lightning 1.5) keys are translated, never silently dropped (:func:`translate_trainer_options`):
  ``gpus: "0,1,"`` -> ``accelerator: gpu, devices: [0, 1]``; ``logger_refresh_rate: N`` ->
  ``log_every_n_steps: N``; ``accelerator: ddp`` -> ``strategy: ddp``; ``precision: 16`` ->
  ``16-mixed`` (``bf16`` -> ``bf16-mixed``, ``32`` -> ``32-true``). ``check_val_every_n_epoch`` is
  rejected for models without a validation step. Strategies: ``auto``, ``ddp``, ``ddp_spawn``,
  ``deepspeed_stage_2`` (needs the ``deepspeed`` package). Anything else that is not a Trainer
  argument is an error naming the key.
- ``lightning.callbacks``: named callback nodes (``target``/``params``; official ``vtdm.*`` names
  resolve). A ``ModelCheckpoint`` node without ``dirpath`` saves full states into
  ``logdir/checkpoints/trainstep_checkpoints/{epoch:06}-{step:09}.ckpt`` and keeps them all.
- ``lightning.modelcheckpoint.params``: parameters of the built-in checkpoint
  (:class:`~sgm.callbacks.LastCheckpoint`) that keeps ``logdir/checkpoints/last.ckpt`` (full
  state, resumable) current: saved at every epoch end, every ``every_minutes`` minutes of wall
  time (default 10; null: off), when SIGTERM or SIGINT arrives (then training stops, exit code
  128 + the signal number) and when training ends; always replaced atomically, so a run killed
  at any moment keeps a complete one. ``save_last: false`` writes no ``last.ckpt`` at all.

Before anything is built, the config's keys and value types are checked against the signatures of
the classes it names (:mod:`sgm.training_config`): a typo'd key or a value of the wrong type is a
:class:`~sgm.util.ConfigError` naming the key path, the value and the expected type.

Run folder ``logdir``: ``<logdir>/<time>_<name>`` for a fresh run, claimed so that two runs never
share one (:mod:`sgm.run_folder`); ``configs/<time>-project.yaml`` (merged config, one per start),
``checkpoints/``, ``image_log/train/``, and the metrics logger's folder (``tensorboard/`` when
tensorboard is installed, else ``csv/metrics.csv``), continued by a resumed run
(:mod:`sgm.metrics_logs`).

Learning rate: ``base_learning_rate`` times ``world size x accumulate_grad_batches x batch
size`` when ``scale_lr`` (the official default), else ``base_learning_rate``.

Seeds: every process seeds ``seed`` before building the model (identical initial weights),
then ``100 * seed + global rank`` when training starts (the official ``int(f"{seed}{rank:02d}")``
for seeds >= 0; see :func:`rank_seed` for resumed runs), so noise and dropout differ between
ranks. The data are seeded by ``data.params.seed`` independently of the rank.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.strategies import DeepSpeedStrategy
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from pytorch_lightning.utilities.model_helpers import is_overridden

from . import atomic_checkpoint, run_folder
from .callbacks import LAST_CHECKPOINT, LastCheckpoint, SetupCallback
from .config import build_model, load_config
from .config_check import check_keywords, check_value, signature_of
from .distributed_faults import RankFailureGuard, watch_ranks
from .metrics_logs import metrics_logger
from .pipelines.conv_shapes import guard_training_convolutions
from .training_config import check_training_config
from .util import ConfigError, instantiate_from_config
from .zero_checkpoint import is_zero_checkpoint, saved_world_size

STRATEGIES = ("auto", "ddp", "ddp_spawn", "deepspeed_stage_2")
PRECISIONS = {"16": "16-mixed", "16-mixed": "16-mixed", "bf16": "bf16-mixed", "bf16-mixed": "bf16-mixed",
              "32": "32-true", "32-true": "32-true"}
# Trainer arguments that build_trainer sets, not the config.
TRAINER_ARGUMENTS_SET_HERE = ("logger", "callbacks", "default_root_dir")


class TrainingConfigError(ConfigError):
    """The ``lightning`` section or the command line asks for something this trainer cannot do."""


# ----------------------------------------------------------------------------------------
# Trainer options


def parse_devices(value: Any) -> int | str | list[int]:
    """Device selection from a flag or config value.

    ``"2"`` / 2 -> 2 devices; ``"0,1"`` / ``"7,"`` (official ``gpus`` strings) -> ids [0, 1] / [7];
    ``"auto"`` and ``-1`` (all) pass through; lists of ids pass through.
    """
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if text == "auto":
        return text
    try:
        if "," in text:
            return [int(part) for part in text.split(",") if part.strip()]
        return int(text)
    except ValueError:
        raise TrainingConfigError(
            f"cannot read devices {value!r}: expected a count, 'auto' or ids like '0,1'") from None


def _translate_gpus(options: dict) -> None:
    gpus = options.pop("gpus")
    if "devices" in options:
        raise TrainingConfigError(f"lightning.trainer has both gpus={gpus!r} (Lightning 1.x) and devices="
                                  f"{options['devices']!r}; keep devices only")
    options["devices"] = parse_devices(gpus)
    options["accelerator"] = "gpu"
    rank_zero_info(f"lightning.trainer.gpus={gpus!r} translated to accelerator=gpu, devices={options['devices']!r}")


def _translate_refresh_rate(options: dict) -> None:
    rate = options.pop("logger_refresh_rate")
    if "log_every_n_steps" in options:
        raise TrainingConfigError("lightning.trainer has both logger_refresh_rate (Lightning 1.x) and "
                                  "log_every_n_steps; keep log_every_n_steps only")
    check_value("lightning.trainer.logger_refresh_rate", rate, int, "pytorch_lightning.Trainer (as log_every_n_steps)")
    options["log_every_n_steps"] = rate
    rank_zero_info(f"lightning.trainer.logger_refresh_rate={rate} translated to log_every_n_steps={rate}")


def _check_strategy(options: dict) -> None:
    if options.get("accelerator") == "ddp":  # Lightning 1.x spelling
        options["accelerator"] = "auto"
        options.setdefault("strategy", "ddp")
        rank_zero_info("lightning.trainer.accelerator=ddp translated to strategy=ddp")
    strategy = options.get("strategy", "auto")
    if strategy not in STRATEGIES:
        raise TrainingConfigError(f"lightning.trainer.strategy={strategy!r} is not supported; use one of {STRATEGIES}")
    if strategy.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        raise TrainingConfigError(f"lightning.trainer.strategy={strategy!r} needs the 'deepspeed' package, which is "
                                  "not installed: pip install -e .[deepspeed], or set lightning.trainer.strategy=ddp")


def _map_precision(options: dict) -> None:
    if "precision" not in options:
        return
    value = str(options["precision"])
    if value not in PRECISIONS:
        raise TrainingConfigError(f"lightning.trainer.precision={options['precision']!r} is not supported; use one "
                                  f"of {sorted(PRECISIONS)}")
    options["precision"] = PRECISIONS[value]


def translate_trainer_options(trainer_config: Mapping, has_validation: bool) -> dict:
    """Lightning 2 ``Trainer`` keyword arguments from ``lightning.trainer`` (see the module docstring).

    Raises:
        TrainingConfigError: naming the key that cannot be honoured, is not a Trainer argument (with
            the closest one) or has a value of a type the argument does not accept.
    """
    options = dict(trainer_config)
    if "gpus" in options:
        _translate_gpus(options)
    if "logger_refresh_rate" in options:
        _translate_refresh_rate(options)
    if "check_val_every_n_epoch" in options and not has_validation:
        raise TrainingConfigError("lightning.trainer.check_val_every_n_epoch has no effect: the model has no "
                                  "validation step; remove the key")
    if "devices" in options:
        options["devices"] = parse_devices(options["devices"])
    _check_strategy(options)
    _map_precision(options)
    try:
        check_keywords(signature_of(pl.Trainer).without(*TRAINER_ARGUMENTS_SET_HERE), options, "lightning.trainer")
    except ConfigError as err:
        raise TrainingConfigError(str(err)) from None
    return options


# ----------------------------------------------------------------------------------------
# Callbacks and logger


def _step_checkpoint_defaults(ckptdir: Path) -> dict:
    return {"dirpath": str(ckptdir / "trainstep_checkpoints"), "filename": "{epoch:06}-{step:09}", "save_top_k": -1}


def last_checkpoint_callback(ckptdir: Path, params: Mapping | None) -> LastCheckpoint:
    """The built-in checkpoint (:class:`~sgm.callbacks.LastCheckpoint`): ``ckptdir/last.ckpt`` at epoch
    ends, every ``every_minutes`` minutes of wall time, on SIGTERM / SIGINT and when training ends.

    Args:
        params: ``lightning.modelcheckpoint.params`` (checked by :func:`~sgm.training_config.check_training_config`).
    """
    return LastCheckpoint(ckptdir, **dict(params or {}))


def rank_seed(seed: int, rank: int, global_step: int) -> int:
    """Seed of one process: ``100 * seed + rank`` from step 0 (the official ``f"{seed}{rank:02d}"``);
    a run resumed at a later step gets a seed derived from (seed, rank, step) instead, so it does
    not replay the noise of the first steps."""
    if global_step == 0:
        return 100 * seed + rank
    return int(np.random.SeedSequence([seed, rank, global_step]).generate_state(1)[0])


class RankSeed(pl.Callback):
    """Reseed every process with :func:`rank_seed` when training starts (after a resume restored the step)."""

    def __init__(self, seed: int):
        super().__init__()
        self.seed = seed

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl.seed_everything(rank_seed(self.seed, trainer.global_rank, trainer.global_step), workers=True, verbose=False)


def config_callbacks(nodes: Mapping, ckptdir: Path) -> list[pl.Callback]:
    """Instantiate the named callback nodes of ``lightning.callbacks``."""
    callbacks = []
    for name, node in nodes.items():
        if not isinstance(node, Mapping) or "target" not in node:
            raise TrainingConfigError(f"lightning.callbacks.{name} must be a node with a 'target'")
        node = dict(node)
        if node["target"].endswith("ModelCheckpoint"):
            node["params"] = {**_step_checkpoint_defaults(ckptdir), **dict(node.get("params") or {})}
        callbacks.append(instantiate_from_config(node))
    return callbacks


# ----------------------------------------------------------------------------------------
# Runs


@dataclass
class TrainOptions:
    """What the command line asks for (see ``train_ddp_spawn.py --help``)."""

    base: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    train: bool = False
    no_test: bool = False
    logdir: str = "logs"
    name: str = ""
    seed: int = 23
    scale_lr: bool = True
    resume: str = ""
    devices: str | None = None
    accelerator: str | None = None
    max_steps: int | None = None


@dataclass
class RunFolders:
    """The run folder and its sub-folders; ``checkpoint`` is the state to resume from, if any.

    Attributes:
        logdir: the run folder (for a fresh run of a launching process, the name it will try
            first: :func:`claim_run_folder` makes it unique).
        now: the run stamp (in the folder name of a fresh run and in its saved config's name).
        to_claim: a fresh run of the launching process: the folder is claimed later.
        claimed: this process created the folder (removed again if the run writes nothing).
        name: the run name (folder name after the stamp).
    """

    logdir: Path
    now: str
    checkpoint: Path | None = None
    to_claim: bool = False
    claimed: bool = False
    name: str = ""

    @property
    def ckptdir(self) -> Path:
        return self.logdir / "checkpoints"

    @property
    def cfgdir(self) -> Path:
        return self.logdir / "configs"


def resolve_resume(resume: str | Path) -> tuple[Path, Path]:
    """(run folder, checkpoint) of ``--resume``: a checkpoint (a file, or a DeepSpeed ``*.ckpt``
    folder) somewhere under ``<run folder>/checkpoints/``, or a run folder (``checkpoints/last.ckpt``).

    Raises:
        FileNotFoundError: naming the missing path.
        TrainingConfigError: for a checkpoint outside a ``checkpoints`` folder.
    """
    path = Path(resume)
    if path.is_file() or (path.is_dir() and path.suffix == ".ckpt"):
        for parent in path.resolve().parents:
            if parent.name == "checkpoints":
                return parent.parent, path
        raise TrainingConfigError(f"--resume {path}: a checkpoint must lie under <run folder>/checkpoints/")
    if path.is_dir():
        checkpoint = path / "checkpoints" / LAST_CHECKPOINT
        if not checkpoint.exists():
            raise FileNotFoundError(f"--resume {path}: no checkpoint at {checkpoint}")
        return path, checkpoint
    raise FileNotFoundError(f"--resume {path}: no such file or folder")


def recover_last_checkpoint(resume: str | Path) -> None:
    """Finish a replacement of ``last.ckpt`` that a killed run left halfway (:mod:`sgm.atomic_checkpoint`),
    so that ``--resume`` finds the newest complete checkpoint. ``resume``: a run folder or a checkpoint path."""
    path = Path(resume)
    if path.is_dir() and path.suffix != ".ckpt":
        path = path / "checkpoints" / LAST_CHECKPOINT
    if path.parent.is_dir():
        atomic_checkpoint.recover(path)


def plan_run(options: TrainOptions) -> tuple[RunFolders, list[str]]:
    """The run folders and the config files to merge (saved configs of a resumed run come first).

    A DDP child rank (started by Lightning's launcher) takes its launching process's stamp and folder
    (:func:`sgm.run_folder.inherited_stamp`); only the launching process of rank 0 claims a fresh
    folder or repairs an interrupted save."""
    inherited = run_folder.inherited_stamp()
    now = inherited or run_folder.new_timestamp()
    launching = inherited is None and run_folder.external_rank() == 0
    if options.resume:
        if launching:
            recover_last_checkpoint(options.resume)
        logdir, checkpoint = resolve_resume(options.resume)
        saved = sorted(str(p) for p in (logdir / "configs").glob("*.yaml"))
        if not saved and not options.base:
            raise FileNotFoundError(f"--resume {options.resume}: no saved config in {logdir / 'configs'} and no --base")
        return RunFolders(logdir, now, checkpoint), saved + list(options.base)
    if not options.base:
        raise TrainingConfigError("no config: pass --base CONFIG.yaml (or --resume a run)")
    name = options.name or Path(options.base[0]).stem
    logdir = Path(options.logdir) / run_folder.folder_name(now, name)
    return RunFolders(logdir, now, to_claim=launching, name=name), list(options.base)


def claim_run_folder(folders: RunFolders) -> RunFolders:
    """Create a fresh run's folder under a name no other run has (:func:`sgm.run_folder.claim`)."""
    if not folders.to_claim:
        return folders
    logdir, stamp = run_folder.claim(folders.logdir.parent, folders.now, folders.name)
    return replace(folders, logdir=logdir, now=stamp, to_claim=False, claimed=True)


@contextmanager
def run_folder_in_use(folders: RunFolders) -> Iterator[RunFolders]:
    """The run folder while the trainer is built and fits: a fresh run's folder is claimed
    (:func:`claim_run_folder`) and removed again if the block ends without a file written in it;
    DDP child ranks that the block starts take this process's stamp, and so its folder."""
    launching = run_folder.inherited_stamp() is None
    folders = claim_run_folder(folders)
    try:
        with run_folder.handed_down(folders.now) if launching else nullcontext():
            yield folders
    finally:
        if folders.claimed:
            run_folder.release_if_unused(folders.logdir)


def apply_cli(trainer_options: dict, options: TrainOptions) -> dict:
    """Command-line ``--accelerator``, ``--devices`` and ``--max_steps`` override the config."""
    if options.accelerator is not None:
        trainer_options["accelerator"] = options.accelerator
    if options.devices is not None:
        trainer_options["devices"] = parse_devices(options.devices)
    if options.max_steps is not None:
        trainer_options["max_steps"] = options.max_steps
    return trainer_options


def check_accelerator(trainer_options: Mapping, cuda_available: bool) -> None:
    """Refuse, before anything is built, what the machine cannot run: a GPU accelerator without
    CUDA, and DeepSpeed (CUDA only) on the CPU.

    Raises:
        TrainingConfigError: naming ``lightning.trainer.accelerator`` / ``strategy`` and the fix.
    """
    accelerator = str(trainer_options.get("accelerator", "auto"))
    strategy = str(trainer_options.get("strategy", "auto"))
    if accelerator in ("gpu", "cuda") and not cuda_available:
        raise TrainingConfigError(f"lightning.trainer.accelerator={accelerator!r} but CUDA is not available on this "
                                  "machine: pass --accelerator cpu (with lightning.trainer.strategy=ddp or auto)")
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not cuda_available)
    if strategy.startswith("deepspeed") and on_cpu:
        raise TrainingConfigError(f"lightning.trainer.strategy={strategy!r} runs on CUDA GPUs only and this run "
                                  f"uses the CPU (accelerator={accelerator!r}): set lightning.trainer.strategy=ddp "
                                  "(several processes) or auto (one)")


def model_init_device(trainer_options: Mapping, cuda_available: bool) -> torch.device:
    """Where this process builds (and randomly initialises) the model: the GPU it will train on,
    else the CPU. Random initialisation of the full-size models takes minutes on the CPU and
    well under a second on a GPU; every rank still builds the same weights from the same seed.
    The GPU is this process's entry (``LOCAL_RANK``) of ``devices`` (ids, or a count of GPUs)."""
    if not cuda_available or str(trainer_options.get("accelerator", "auto")) == "cpu":
        return torch.device("cpu")
    devices = trainer_options.get("devices", "auto")
    ids = list(devices) if isinstance(devices, (list, tuple)) else list(range(torch.cuda.device_count()))
    return torch.device("cuda", ids[int(os.environ.get("LOCAL_RANK", 0))])


def check_resume(checkpoint: Path, deepspeed: bool, world_size: int) -> None:
    """Refuse a resume the strategy cannot load: a DeepSpeed checkpoint folder outside DeepSpeed
    (``deepspeed`` False) or with another number of ranks than ``world_size`` (ZeRO's optimizer
    partitions are per rank), and a checkpoint file under DeepSpeed.

    Raises:
        TrainingConfigError: naming the checkpoint, the strategy and what to do instead.
    """
    restart = (f"or convert it (python scripts/convert_checkpoint.py --input {checkpoint} --output W.safetensors) "
               "and start a new run from its weights with model.params.ckpt_path=W.safetensors")
    if is_zero_checkpoint(checkpoint):
        if not deepspeed:
            raise TrainingConfigError(f"--resume {checkpoint} is a DeepSpeed checkpoint: resume it with "
                                      f"lightning.trainer.strategy=deepspeed_stage_2, {restart}")
        saved = saved_world_size(checkpoint)
        if saved != world_size:
            raise TrainingConfigError(f"--resume {checkpoint} was saved by {saved} DeepSpeed ranks and this run has "
                                      f"{world_size}: ZeRO's optimizer state is split per rank; resume on "
                                      f"{saved} GPUs (--devices {saved}), {restart}")
    elif deepspeed:
        raise TrainingConfigError(f"--resume {checkpoint} is a Lightning checkpoint file, which DeepSpeed cannot "
                                  f"resume: resume it with lightning.trainer.strategy=ddp (or auto), {restart}")


def build_trainer(config: DictConfig, folders: RunFolders, options: TrainOptions, has_validation: bool) -> pl.Trainer:
    """The Trainer of ``config.lightning`` with the run's callbacks and logger."""
    lightning = OmegaConf.to_container(config.get("lightning") or OmegaConf.create(), resolve=True)
    trainer_options = apply_cli(translate_trainer_options(lightning.get("trainer") or {}, has_validation), options)
    callbacks = [
        SetupCallback(folders.logdir, folders.ckptdir, folders.cfgdir, config, folders.now),
        RankSeed(options.seed),
        RankFailureGuard(),  # a failing rank ends every rank (sgm.distributed_faults)
        LearningRateMonitor(logging_interval="step"),
        last_checkpoint_callback(folders.ckptdir, (lightning.get("modelcheckpoint") or {}).get("params")),
        *config_callbacks(lightning.get("callbacks") or {}, folders.ckptdir),
    ]
    return pl.Trainer(**trainer_options, callbacks=callbacks, logger=metrics_logger(folders.logdir),
                      default_root_dir=str(folders.logdir))


def scaled_learning_rate(base_lr: float, batch_size: int, world_size: int, accumulate: int, scale_lr: bool) -> float:
    """``world_size x accumulate x batch_size x base_lr`` when ``scale_lr``, else ``base_lr``."""
    return world_size * accumulate * batch_size * base_lr if scale_lr else base_lr


def set_learning_rate(model: pl.LightningModule, config: DictConfig, trainer: pl.Trainer, scale_lr: bool) -> float:
    """Set ``model.learning_rate`` from ``model.base_learning_rate`` and the batch layout (both
    checked by :func:`check_training_config`)."""
    base_lr, batch_size = config.model.base_learning_rate, config.data.params.batch_size
    world_size = trainer.num_devices * trainer.num_nodes
    accumulate = trainer.accumulate_grad_batches
    model.learning_rate = scaled_learning_rate(base_lr, batch_size, world_size, accumulate, scale_lr)
    if scale_lr:
        rank_zero_info(f"learning rate {model.learning_rate:.3e} = {world_size} (devices) x {accumulate} "
                       f"(accumulation) x {batch_size} (batch) x {base_lr:.2e} (base)")
    else:
        rank_zero_info(f"learning rate {model.learning_rate:.3e} (not scaled)")
    return model.learning_rate


def release_process_group() -> None:
    """Destroy this process's default process group, if any, once training is over: a local
    step (no collective) that PyTorch asks for before exit; left to the interpreter's shutdown,
    NCCL's teardown can hold a finished rank for minutes (seen: a DDP child rank on 2 H200s still
    alive 60 s after rank 0 had finished)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def run(options: TrainOptions) -> pl.Trainer:
    """Build model, data and trainer from the options; fit when ``options.train``.

    Every check that needs no model (config keys and types, trainer options, accelerator, the data
    folder) runs before the model is built and before anything is written (:func:`run_folder_in_use`).
    """
    folders, base = plan_run(options)
    config = load_config(base, options.overrides)
    check_training_config(config)
    # Checked before the (slow) model build; the validation-step check waits for the model.
    trainer_section = OmegaConf.to_container((config.get("lightning") or {}).get("trainer") or {}, resolve=True)
    early_options = apply_cli(translate_trainer_options(trainer_section, has_validation=True), options)
    check_accelerator(early_options, torch.cuda.is_available())
    data = instantiate_from_config(config.data)
    data.setup("fit")  # reads the data folder: one without a usable object is refused before the model build
    pl.seed_everything(options.seed, workers=True)
    with model_init_device(early_options, torch.cuda.is_available()):
        model = build_model(config)
    guard_training_convolutions(model, config, early_options.get("precision"))  # wrong cuDNN kernels (issue 20)
    has_validation = is_overridden("validation_step", model, pl.LightningModule)
    with run_folder_in_use(folders) as folders:
        trainer = build_trainer(config, folders, options, has_validation)
        set_learning_rate(model, config, trainer, options.scale_lr)
        if folders.checkpoint is not None:
            check_resume(folders.checkpoint, isinstance(trainer.strategy, DeepSpeedStrategy), trainer.world_size)
        rank_zero_info(f"run folder: {folders.logdir}")
        if options.train:
            with watch_ranks(trainer):  # a failing rank ends every rank, with its error (sgm.distributed_faults)
                trainer.fit(model, datamodule=data, ckpt_path=str(folders.checkpoint) if folders.checkpoint else None)
                release_process_group()
        else:
            rank_zero_warn("--train is False: model, data and trainer were built, nothing was trained")
    if not options.no_test and not is_overridden("test_step", model, pl.LightningModule):
        rank_zero_warn("the model has no test_step: the test phase is skipped (pass --no-test True to silence this)")
    return trainer


def last_checkpoint_of(trainer: pl.Trainer) -> LastCheckpoint | None:
    """The trainer's :class:`~sgm.callbacks.LastCheckpoint` callback, if any."""
    return next((callback for callback in trainer.callbacks if isinstance(callback, LastCheckpoint)), None)


def exit_code_after_fit(trainer: pl.Trainer) -> int:
    """0, or ``128 + signal number`` when SIGTERM / SIGINT stopped training (the shell convention
    for a process ended by that signal), after printing on stderr where the checkpoint is and how
    to continue. Only global rank 0 reports it: the other ranks return 0, since a DDP child that
    exits non-zero reads as a failed rank to its launching process (:mod:`sgm.distributed_faults`)."""
    callback = last_checkpoint_of(trainer)
    if callback is None or callback.stopped_by is None or not trainer.is_global_zero:
        return 0
    print(callback.stop_message(trainer.default_root_dir), file=sys.stderr, flush=True)
    return 128 + callback.stopped_by
