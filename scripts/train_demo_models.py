"""Train the demo models (configs/demo-v01.yaml, demo-v02.yaml) from nothing, on this project's own data.

    python scripts/train_demo_models.py                      # everything, as far as --minutes allows
    python scripts/train_demo_models.py --minutes 9          # one device call; run again to continue

Phases, in order; a finished phase (WORK/<phase>.done.json) is skipped, and one that was stopped
(by ``--minutes``) continues from its ``last.ckpt``, so repeated calls (e.g. 10-minute device
calls) add up to one run:

1. ``data``: procedural orbits (scripts/render_synthetic_orbits.py, 128 px, 6 rings x 16 views)
   of ``--train-objects`` objects with seed 0 into WORK/train, and ``--heldout-objects`` objects
   with seed 1 into WORK/heldout. Object i of seed s is drawn from the seed (s, i), so the two
   sets are disjoint; the held-out objects are for scripts/eval_demo.py only.
2. ``autoencoder``: the VAE (configs/demo-train-autoencoder.yaml), as an autoencoder; its
   weights go to WORK/autoencoder.safetensors.
3. ``stage1``: init file (random UNet and image encoder, the trained VAE as first stage and as
   condition-frame encoder), then configs/demo-train-v01.yaml (on demo-v01.yaml); every weight of
   the trained model goes to EXPORT/stage1.safetensors (float16; EXPORT: demo/models/).
4. ``stage2``: the same with configs/demo-train-v02.yaml (on demo-v02.yaml).
5. ``stage2-finetune``: the stage-2 model of phase 4 (its float16 weights, as exported) trained on
   with configs/demo-finetune-v02.yaml (far milder degradation of the condition frames, a
   decaying rate); its weights replace EXPORT/stage2.safetensors. ``--stage2-finetune-steps 0``
   leaves phase 4's weights as the exported ones.

Stages 1 and 2 depend only on the autoencoder (stage 2 trains on degraded ground-truth views, not
on stage-1 output), so once it is done two processes on the same WORK, ``--only stage1`` and
``--only stage2``, can train them side by side on one GPU, whose small steps leave it mostly idle
(the shipped run did so: BENCHMARKS.md); the fine-tune waits for phase 4.

Across device calls (a call: at most 10 minutes, at most 8 files of 16 MiB back): ``--pack DIR``
writes, at the end of a call, what a later call needs to continue (the log, the finished phases'
records and the autoencoder, the unfinished phases' run folders) as one tar in parts of at most
15 MiB; ``--unpack DIR`` (that folder, carried into the next call) restores it first. The data
are rendered again on each call (seconds on a GPU), reproducibly; the stages' exported files
are the only other output.

Each training phase runs ``train_ddp_spawn.py`` in a child process with run folders under
WORK/runs/<phase>/, data-parallel on ``--devices`` devices (default 1), with the phase's step count
as ``lightning.trainer.max_steps`` (where a learning-rate schedule in the config can read it); at
the deadline the child gets SIGTERM and saves ``last.ckpt`` (exit 143).
The log (phase, steps, seconds, final loss) is appended to WORK/log.jsonl and printed.

The latent scale factor (1 / standard deviation of the VAE's latents over the training views)
is computed once, when phase 2 finishes (kept in its done record), passed to both stages'
training and stored in the exported files' metadata; ``model.params.scale_factor`` of both demo
configs must hold it (to 4 significant digits; the script warns otherwise).
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sgm.checkpoint import read_state_dict
from sgm.cli import run_main
from sgm.common.errors import UsageError
from sgm.config import build_model, load_config
from sgm.models.autoencoder import AutoencoderKL
from sgm.models.autoencoder_training import autoencoder_state_dict

ROOT = Path(__file__).resolve().parents[1]

TRAIN_SEED, HELDOUT_SEED = 0, 1
# Per stage: its demo (inference) config, and the training overlay on it.
STAGES = {"stage1": ("configs/demo-v01.yaml", "configs/demo-train-v01.yaml"),
          "stage2": ("configs/demo-v02.yaml", "configs/demo-train-v02.yaml")}
# The last phase: (stage whose weights it trains on and replaces, config).
FINETUNE = {"stage2-finetune": ("stage2", "configs/demo-finetune-v02.yaml")}
TRAINING_PHASES = ("autoencoder", "stage1", "stage2", *FINETUNE)
AUTOENCODER_CONFIG = "configs/demo-train-autoencoder.yaml"
SCALE_DIGITS = 4
STOP_GRACE_S = 300  # how long a child may take to save last.ckpt after SIGTERM


@dataclass(frozen=True)
class Plan:
    """What one call does: folders, step counts per phase, device and deadline."""

    work: Path
    export: Path
    resolution: int
    train_objects: int
    heldout_objects: int
    steps: dict[str, int]
    overrides: dict[str, list[str]]
    accelerator: str
    devices: int
    precision: str | None
    render_device: str
    deadline: float  # time.monotonic() value

    def seconds_left(self) -> float:
        return self.deadline - time.monotonic()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT / "data" / "demo", help="data and run folders")
    parser.add_argument("--export", type=Path, default=ROOT / "demo" / "models", help="where the weights go")
    parser.add_argument("--resolution", type=int, default=128, help="render size in pixels (the configs resize)")
    parser.add_argument("--minutes", type=float, default=None, help="stop (resumably) after this wall time")
    parser.add_argument("--train-objects", type=int, default=768)
    parser.add_argument("--heldout-objects", type=int, default=32)
    parser.add_argument("--autoencoder-steps", type=int, default=2000)
    parser.add_argument("--stage1-steps", type=int, default=2885)
    parser.add_argument("--stage2-steps", type=int, default=860)
    parser.add_argument("--stage2-finetune-steps", type=int, default=1219, help="0: no fine-tuning of stage 2")
    parser.add_argument("--set", action="append", default=[], metavar="PHASE:KEY=VALUE",
                        help=f"config override for one training phase ({', '.join(TRAINING_PHASES)}), repeatable, "
                             "e.g. autoencoder:data.params.batch_size=4")
    parser.add_argument("--accelerator", default="auto", help="auto (the GPU when there is one), cpu or gpu")
    parser.add_argument("--devices", type=int, default=1,
                        help="data-parallel devices per phase (default 1, as in the shipped run); the configs' batch "
                             "is per device, and the learning rate scales with the device count (--scale_lr)")
    parser.add_argument("--precision", default=None, help="Lightning precision, e.g. bf16-mixed on a GPU (default: the configs' 32)")
    parser.add_argument("--render-device", default="auto", help="device of the orbit renderer")
    parser.add_argument("--pack", type=Path, default=None, help="at the end, write the state to continue from here")
    parser.add_argument("--unpack", type=Path, default=None, help="first, restore a state written by --pack")
    parser.add_argument("--only", choices=("data", *TRAINING_PHASES), default=None,
                        help="run this phase only (the earlier ones must be finished)")
    return parser.parse_args(argv)


def phase_overrides(items: list[str]) -> dict[str, list[str]]:
    """``PHASE:KEY=VALUE`` items -> {phase: [KEY=VALUE, ...]}.

    Raises:
        UsageError: an item without a training phase name before ``:``.
    """
    overrides: dict[str, list[str]] = {}
    for item in items:
        phase, _, override = item.partition(":")
        if phase not in TRAINING_PHASES or "=" not in override:
            raise UsageError(f"--set {item!r}: expected PHASE:KEY=VALUE with PHASE one of {', '.join(TRAINING_PHASES)}")
        overrides.setdefault(phase, []).append(override)
    return overrides


def log(plan: Plan, **entry) -> None:
    """Print one log entry and append it to WORK/log.jsonl."""
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **entry}
    print(json.dumps(entry), flush=True)
    with open(plan.work / "log.jsonl", "a") as stream:
        stream.write(json.dumps(entry) + "\n")


# ----------------------------------------------------------------------------------------
# Phase 1: data


def render(plan: Plan, folder: Path, count: int, seed: int) -> None:
    """Render ``count`` objects of ``seed`` into ``folder`` unless it holds them already.

    The objects are rendered into ``<folder>.partial`` (this script's own; one left by a stopped
    render is removed) and renamed to ``folder`` when complete.

    Raises:
        UsageError: ``folder`` exists with fewer objects than ``count`` (nothing is deleted).
        RuntimeError: the renderer failed.
    """
    if folder.is_dir():
        found = len([p for p in folder.iterdir() if (p / "object.json").exists()])
        if found >= count:
            return
        raise UsageError(f"{folder} holds {found} rendered objects, {count} are asked for: remove the folder "
                         f"(it is rendered again) or ask for {found}")
    partial = folder.with_name(folder.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    start = time.monotonic()
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "render_synthetic_orbits.py"), "--out",
                             str(partial), "--num-objects", str(count), "--resolution", str(plan.resolution),
                             "--seed", str(seed), "--device", plan.render_device], check=False)
    if result.returncode != 0:
        raise RuntimeError(f"rendering {folder} failed (exit code {result.returncode})")
    partial.rename(folder)
    log(plan, phase="data", folder=str(folder), objects=count, seed=seed, seconds=round(time.monotonic() - start, 1))


# ----------------------------------------------------------------------------------------
# Training phases


def run_folder(plan: Plan, phase: str) -> Path | None:
    """The phase's run folder (the newest under WORK/runs/<phase>/ with a last.ckpt), or None."""
    runs = sorted((plan.work / "runs" / phase).glob("*/checkpoints/last.ckpt"))
    return runs[-1].parents[1] if runs else None


def checkpoint_step(run: Path) -> int:
    """The global step saved in ``run``'s last.ckpt."""
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True, mmap=True)
    return int(state["global_step"])


def last_loss(run: Path) -> float | None:
    """The last logged training ``loss`` of ``run``: from its metrics.csv, else its TensorBoard
    events (whichever logger the trainer used, sgm.metrics_logs), or None."""
    for path in sorted(run.rglob("metrics.csv")):
        with open(path) as stream:
            values = [row["loss"] for row in csv.DictReader(stream) if row.get("loss")]
        if values:
            return float(values[-1])
    events = sorted(run.rglob("events.out.tfevents.*"))
    if events:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        scalars = []
        for path in events:
            accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0})
            accumulator.Reload()
            if "loss" in accumulator.Tags()["scalars"]:
                scalars += accumulator.Scalars("loss")
        if scalars:
            return float(max(scalars, key=lambda event: event.step).value)
    return None


def done_file(plan: Plan, phase: str) -> Path:
    """WORK/<phase>.done.json: written when the phase has finished and its weights are saved."""
    return plan.work / f"{phase}.done.json"


def train(plan: Plan, phase: str, configs: list[str], overrides: list[str]) -> bool:
    """Run (or continue) ``phase`` until its step count or the deadline; True when it reached its steps."""
    steps = plan.steps[phase]
    run = run_folder(plan, phase)
    if run is not None and checkpoint_step(run) >= steps:
        return True
    command = [sys.executable, str(ROOT / "train_ddp_spawn.py"), "--train", "True", "--accelerator", plan.accelerator]
    if run is None:
        command += ["--base", *configs, "--logdir", str(plan.work / "runs" / phase), "--name", phase]
    else:
        command += ["--resume", str(run)]
    # In the config (not --max_steps): a learning-rate schedule there ends with the phase's last step.
    overrides = [*overrides, f"lightning.trainer.max_steps={steps}", f"lightning.trainer.devices={plan.devices}",
                 *plan.overrides.get(phase, [])]
    if plan.precision is not None:
        overrides = [*overrides, f"lightning.trainer.precision={plan.precision}"]
    start_step = 0 if run is None else checkpoint_step(run)
    start = time.monotonic()
    child = subprocess.Popen(command + overrides, cwd=ROOT)
    try:
        child.wait(timeout=max(plan.seconds_left(), 1.0))
    except subprocess.TimeoutExpired:
        child.send_signal(signal.SIGTERM)  # the trainer saves last.ckpt and exits 143
        child.wait(timeout=STOP_GRACE_S)
    if child.returncode not in (0, 128 + signal.SIGTERM):
        raise RuntimeError(f"{phase}: train_ddp_spawn.py exited with {child.returncode}")
    run = run_folder(plan, phase)
    if run is None:
        raise RuntimeError(f"{phase}: no last.ckpt under {plan.work / 'runs' / phase}")
    step = checkpoint_step(run)
    log(plan, phase=phase, run=str(run), steps_from=start_step, steps_to=step, of=steps,
        seconds=round(time.monotonic() - start, 1), last_loss=last_loss(run))
    return step >= steps


def trained_weights(plan: Plan, phase: str) -> dict[str, torch.Tensor]:
    """The module weights in the last.ckpt of ``phase``."""
    return read_state_dict(run_folder(plan, phase) / "checkpoints" / "last.ckpt")


# ----------------------------------------------------------------------------------------
# Between phases


def autoencoder_file(plan: Plan) -> Path:
    return plan.work / "autoencoder.safetensors"


def export_autoencoder(plan: Plan) -> Path:
    """WORK/autoencoder.safetensors: the trained AutoencoderKL's weights (float32)."""
    save_file(autoencoder_state_dict(trained_weights(plan, "autoencoder")), autoencoder_file(plan))
    return autoencoder_file(plan)


@torch.no_grad()
def latent_scale_factor(plan: Plan, views: int = 256) -> float:
    """1 / std of the VAE's latent samples (seeded) over ``views`` training views at the stage-1 size
    (64 px), to SCALE_DIGITS significant digits."""
    from sgm.data.video_dataset import load_frame

    config = load_config(ROOT / STAGES["stage1"][0])
    vae = AutoencoderKL(**config.model.params.first_stage_config.params)
    vae.load_state_dict(load_file(autoencoder_file(plan)))
    files = sorted((plan.work / "train").glob("*/*.png"))[::7][:views]
    size = int(config.model.params.resolution)
    frames = torch.stack([load_frame(path, size, size)[0] for path in files])
    generator = torch.Generator().manual_seed(0)
    latents = torch.cat([vae.encode(chunk, generator=generator) for chunk in frames.split(32)])
    return float(f"{1.0 / float(latents.std()):.{SCALE_DIGITS}g}")


def warn_unless_configs_hold(scale: float) -> None:
    """Warn where a demo config's ``model.params.scale_factor`` differs from ``scale`` (SCALE_DIGITS digits)."""
    wanted = float(f"{scale:.{SCALE_DIGITS}g}")
    for config, _ in STAGES.values():
        found = float(load_config(ROOT / config).model.params.scale_factor)
        if float(f"{found:.{SCALE_DIGITS}g}") != wanted:
            print(f"WARNING: {config}: model.params.scale_factor is {found}; the trained VAE's latents need "
                  f"{wanted} (1 / their std): write `scale_factor: {wanted}` there", file=sys.stderr)


def write_init(plan: Plan, stage: str) -> Path:
    """WORK/<stage>-init.safetensors: every weight of the stage's model, random (seeded) except the
    trained VAE in ``first_stage_model`` and in every condition-frame encoder."""
    path = plan.work / f"{stage}-init.safetensors"
    if path.exists():
        return path
    torch.manual_seed(0)
    model = build_model(load_config(ROOT / STAGES[stage][1]), random_pretrained_encoders=True)
    vae_weights = load_file(autoencoder_file(plan))
    loaded = 0
    for module in model.modules():
        if isinstance(module, AutoencoderKL):
            module.load_state_dict(vae_weights)
            loaded += 1
    if loaded < 2:
        raise RuntimeError(f"{stage}: expected the VAE as first stage and condition encoder, found {loaded}")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


def stage_weights(plan: Plan, stage: str, phase: str) -> dict[str, torch.Tensor]:
    """Every weight of ``stage``'s demo model as trained by ``phase`` (checked strictly against the
    demo config), floating-point tensors in float16."""
    model = build_model(load_config(ROOT / STAGES[stage][0]), random_pretrained_encoders=True)
    model.load_state_dict(trained_weights(plan, phase), strict=True)
    return {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}


def write_finetune_init(plan: Plan, phase: str) -> Path:
    """WORK/<phase>-init.safetensors: the weights its stage's phase exported (float16)."""
    path = plan.work / f"{phase}-init.safetensors"
    if not path.exists():
        save_file(stage_weights(plan, FINETUNE[phase][0], FINETUNE[phase][0]), path)
    return path


def export_stage(plan: Plan, stage: str, scale: float, phase: str | None = None) -> Path:
    """EXPORT/<stage>.safetensors: every weight of ``stage`` as trained by ``phase`` (default: the
    stage's own phase) in float16, written atomically; metadata: the steps ``phase`` trained and the
    latent ``scale_factor``."""
    phase = phase or stage
    tensors = stage_weights(plan, stage, phase)
    plan.export.mkdir(parents=True, exist_ok=True)
    target = plan.export / f"{stage}.safetensors"
    partial = target.with_suffix(".partial")
    save_file(tensors, partial, metadata={"steps": str(checkpoint_step(run_folder(plan, phase))),
                                          "scale_factor": str(scale)})
    os.replace(partial, target)
    log(plan, phase="export", file=str(target), megabytes=round(target.stat().st_size / 2**20, 2))
    return target


# ----------------------------------------------------------------------------------------
# Carrying a run from one device call to the next


PART_BYTES = 15 * 2**20


def packed_files(work: Path) -> list[Path]:
    """What a later call needs: the log, the finished phases' records and the autoencoder's weights
    (the stages' weights are the exported files), and every unfinished phase's run folders (and
    init file, for a fine-tune)."""
    files = [work / "log.jsonl", work / "autoencoder.safetensors", *work.glob("*.done.json")]
    for phase in TRAINING_PHASES:
        if not (work / f"{phase}.done.json").exists():
            files += [p for p in (work / "runs" / phase).rglob("*") if p.is_file()]
            files += [work / f"{phase}-init.safetensors"] if phase in FINETUNE else []
    return sorted(p for p in files if p.is_file())


def pack(work: Path, out: Path) -> None:
    """Write :func:`packed_files` of ``work`` as one tar split into ``NNN.part`` files of at most
    PART_BYTES in ``out`` (few files: a device call brings back at most 8), with ``manifest.json``
    (the parts and the tar's sha256)."""
    stream = io.BytesIO()
    with tarfile.open(fileobj=stream, mode="w") as archive:
        for path in packed_files(work):
            archive.add(path, arcname=str(path.relative_to(work)))
    data = stream.getvalue()
    out.mkdir(parents=True, exist_ok=True)
    parts = []
    for offset in range(0, len(data), PART_BYTES):
        parts.append(f"{offset // PART_BYTES:03d}.part")
        (out / parts[-1]).write_bytes(data[offset:offset + PART_BYTES])
    (out / "manifest.json").write_text(json.dumps({"parts": parts, "bytes": len(data),
                                                   "sha256": hashlib.sha256(data).hexdigest()}, indent=1))


def unpack(packed: Path, work: Path) -> None:
    """Restore under ``work`` what :func:`pack` wrote into ``packed``, after checking its sha256.

    Raises:
        UsageError: no manifest, a missing part or parts whose checksum differs (named).
    """
    manifest_path = packed / "manifest.json"
    if not manifest_path.is_file():
        raise UsageError(f"--unpack {packed}: no manifest.json (a folder written by --pack is expected)")
    manifest = json.loads(manifest_path.read_text())
    missing = [name for name in manifest["parts"] if not (packed / name).is_file()]
    if missing:
        raise UsageError(f"--unpack {packed}: parts {missing} are missing")
    data = b"".join((packed / name).read_bytes() for name in manifest["parts"])
    if hashlib.sha256(data).hexdigest() != manifest["sha256"]:
        raise UsageError(f"--unpack {packed}: the parts do not match the manifest's sha256")
    work.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as archive:
        archive.extractall(work, filter="data")


# ----------------------------------------------------------------------------------------


def finish(plan: Plan, phase: str, weights: Path, **extra) -> None:
    """Write the done record of a finished phase whose weights are saved in ``weights`` (with
    ``extra`` entries)."""
    run = run_folder(plan, phase)
    record = {"phase": phase, "steps": checkpoint_step(run), "run": str(run), "weights": str(weights),
              "last_loss": last_loss(run), **extra}
    done_file(plan, phase).write_text(json.dumps(record))
    log(plan, **{**record, "phase": f"{phase} done"})


def run(plan: Plan, only: str | None) -> int:
    plan.work.mkdir(parents=True, exist_ok=True)
    wanted = (lambda phase: only is None or only == phase)
    if wanted("data"):
        render(plan, plan.work / "train", plan.train_objects, TRAIN_SEED)
        render(plan, plan.work / "heldout", plan.heldout_objects, HELDOUT_SEED)
    if only == "data":
        return 0
    data_override = f"data.params.base_folder={plan.work / 'train'}"
    if wanted("autoencoder") and not done_file(plan, "autoencoder").exists():
        if not train(plan, "autoencoder", [AUTOENCODER_CONFIG], [data_override]):
            return 0
        weights = export_autoencoder(plan)
        finish(plan, "autoencoder", weights, scale_factor=latent_scale_factor(plan))
    if not done_file(plan, "autoencoder").exists():
        raise UsageError(f"--only {only} needs the autoencoder phase finished in {plan.work} (no "
                         f"{done_file(plan, 'autoencoder').name}): run --only autoencoder first")
    # Computed once, when the autoencoder finished: every later call trains the stages with the same value.
    scale = json.loads(done_file(plan, "autoencoder").read_text())["scale_factor"]
    warn_unless_configs_hold(scale)
    stage_overrides = [data_override, f"model.params.scale_factor={scale}"]
    for stage, (_, training_config) in STAGES.items():
        if wanted(stage) and not done_file(plan, stage).exists():
            init = write_init(plan, stage)
            if not train(plan, stage, [training_config], [*stage_overrides, f"model.params.ckpt_path={init}"]):
                return 0
            finish(plan, stage, export_stage(plan, stage, scale))
            for phase in (name for name, (source, _) in FINETUNE.items() if source == stage):
                write_finetune_init(plan, phase)  # now: a later call may not have the stage's run folder
    for phase, (stage, config) in FINETUNE.items():
        if wanted(phase) and plan.steps[phase] > 0 and not done_file(plan, phase).exists():
            if not done_file(plan, stage).exists():
                raise UsageError(f"--only {phase} fine-tunes the {stage} phase's model, which is not finished in "
                                 f"{plan.work} (no {done_file(plan, stage).name}): run --only {stage} first")
            init = write_finetune_init(plan, phase)
            if not train(plan, phase, [config], [*stage_overrides, f"model.params.ckpt_path={init}"]):
                return 0
            finish(plan, phase, export_stage(plan, stage, scale, phase))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.devices < 1:
        raise UsageError(f"--devices must be at least 1, got {args.devices}")
    if args.unpack is not None:
        unpack(args.unpack, args.work.resolve())
    minutes = args.minutes if args.minutes is not None else 1e6
    plan = Plan(work=args.work.resolve(), export=args.export.resolve(), resolution=args.resolution,
                train_objects=args.train_objects, heldout_objects=args.heldout_objects,
                steps={"autoencoder": args.autoencoder_steps, "stage1": args.stage1_steps,
                       "stage2": args.stage2_steps, "stage2-finetune": args.stage2_finetune_steps},
                overrides=phase_overrides(args.set),
                accelerator=args.accelerator, devices=args.devices, precision=args.precision,
                render_device=args.render_device,
                deadline=time.monotonic() + 60 * minutes)
    try:
        return run(plan, args.only)
    finally:
        if args.pack is not None:
            pack(plan.work, args.pack)


if __name__ == "__main__":
    sys.exit(run_main(main))
