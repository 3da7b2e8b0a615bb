"""Choosing the device and dtype, and building a stage model from its config and checkpoint.

The one place where a device string becomes a ``torch.device``: nothing else in the
package names ``cuda``.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint import load_into, read_state_dict
from ..common.errors import CheckpointError, UsageError
from ..config import build_model, load_config
from ..hub import KNOWN_FILES, is_hub_reference, local_path
from ..modules.diffusionmodules.sampling import DenoiserFn
from .replicas import ParallelHalves

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
RANDOM_WEIGHTS_SEED = 0
# The checkout this package lives in: a relative checkpoint path missing from the working directory
# is looked up here too (the demo configs name demo/models/*.safetensors, found from any folder).
PROJECT_ROOT = Path(__file__).resolve().parents[2]
README_CHECKPOINTS = "README.md, section 'Checkpoints' (ckpts/README.md lists every file)"


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """``None``/``"auto"`` -> float16 on cuda (as the official scripts run), float32 on cpu."""
    if name in (None, "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32
    try:
        return DTYPES[name]
    except KeyError:
        raise UsageError(f"unknown dtype {name!r}: choose one of {sorted(DTYPES)}") from None


@dataclass
class ModelSpec:
    """Where a stage model comes from.

    Attributes:
        config: YAML path.
        checkpoint: weights file, or an ``hf://`` hub reference (:mod:`sgm.hub`); None uses the
            config's ``checkpoint`` entry, and a config whose ``checkpoint`` is null builds
            untrained random weights (demo configs).
    """

    config: Path
    checkpoint: str | Path | None = None


def checkpoint_source(spec: ModelSpec) -> str | Path | None:
    """Where the weights of ``spec`` come from, as named (a path, or an ``hf://`` string), without
    reading or downloading anything: its own checkpoint, else its config's (None: random weights)."""
    checkpoint = spec.checkpoint if spec.checkpoint is not None else load_config(spec.config).get("checkpoint")
    if checkpoint is None:
        return None
    return str(checkpoint) if is_hub_reference(str(checkpoint)) else Path(checkpoint)


def resolve_checkpoint(spec: ModelSpec) -> Path | None:
    """The local weights file of ``spec`` (:func:`checkpoint_source`; a hub file is downloaded into
    the hub cache first; a relative path is looked up in the working directory, then under
    :data:`PROJECT_ROOT`). None: random weights.

    Raises:
        FileNotFoundError: the named checkpoint does not exist (with the README section to read, and
            where to get a released file); :class:`sgm.hub.HubFileError` for a hub file that cannot be had.
    """
    source = checkpoint_source(spec)
    if source is None:
        return None
    checkpoint = local_path(source)
    if not checkpoint.exists() and not checkpoint.is_absolute() and (PROJECT_ROOT / checkpoint).exists():
        checkpoint = PROJECT_ROOT / checkpoint
    if not checkpoint.exists():  # a file, or a DeepSpeed checkpoint folder
        known = KNOWN_FILES.get(checkpoint.name)
        hint = f"; {known.advice(checkpoint)}" if known is not None else ""
        raise FileNotFoundError(f"checkpoint not found: {checkpoint} (see {README_CHECKPOINTS}){hint}")
    return checkpoint


# The functions of ``torch.nn.init`` that modules' constructors draw their initial weights with.
INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
                  "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_")
_uninitialised = threading.Lock()


@contextlib.contextmanager
def weights_left_uninitialised():
    """Build modules in this block without drawing their initial weights: ``torch.nn.init``'s
    functions leave the tensors of this thread as they are (other threads still get them drawn).

    For a model whose every persistent weight a checkpoint replaces right after: the full-size
    stage-1 model draws 2.7 B random numbers otherwise (36 s on 2 CPU cores). Buffers that
    constructors compute (attention masks) are made as usual. One block at a time, process-wide.
    """
    with _uninitialised:
        owner = threading.get_ident()
        originals = {name: getattr(torch.nn.init, name) for name in INIT_FUNCTIONS}

        def left_as_is(original):
            def init(tensor, *args, **kwargs):
                return tensor if threading.get_ident() == owner else original(tensor, *args, **kwargs)
            return init

        try:
            for name, original in originals.items():
                setattr(torch.nn.init, name, left_as_is(original))
            yield
        finally:
            for name, original in originals.items():
                setattr(torch.nn.init, name, original)


def load_stage_model(spec: ModelSpec, device: torch.device, dtype: torch.dtype):
    """Build the model of ``spec.config``, load its checkpoint strictly, move it to ``device``/``dtype``.

    Returns:
        (model in eval mode without gradients, checkpoint path or None when the weights are random).

    Raises:
        FileNotFoundError: the config or the checkpoint is missing (named, with the README section).
        CheckpointError: the checkpoint cannot be read, does not fit the config's architecture, or
            holds NaN/inf weights (also after the cast to ``dtype``).
    """
    checkpoint = resolve_checkpoint(spec)
    weights = read_state_dict(checkpoint) if checkpoint is not None else None  # a bad file fails before the build
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)  # untrained (demo) weights are the same on every run
        # A released checkpoint holds every weight and is loaded strictly, so the encoders'
        # separate pretrained files are not read (and need not be downloaded) in that case.
        # Nor is the config's starting point (``model.params.ckpt_path``, e.g. the SVD weights of a
        # training config): the checkpoint replaces every weight.
        overrides = {"ckpt_path": None} if checkpoint else {}
        with weights_left_uninitialised() if weights is not None else contextlib.nullcontext():
            model = build_model(load_config(spec.config), random_pretrained_encoders=True if checkpoint else None,
                                **overrides)
    if weights is not None:
        load_into(model, weights, source=str(checkpoint))
        del weights
    else:
        log.warning("%s names no checkpoint: the model has UNTRAINED random weights and will output noise",
                    spec.config)
    # Inference: no parameter needs a gradient (a config's trained_param_keys leave some flags on, and a
    # compiled UNet's graph is keyed on every flag).
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    source = str(checkpoint) if checkpoint is not None else f"the random weights built from {spec.config}"
    check_finite_weights(model, source, dtype)
    return model, checkpoint


def check_finite_weights(model: torch.nn.Module, source: str, dtype: torch.dtype) -> None:
    """Refuse a model with a NaN or inf among its floating-point parameters, or a NaN among its
    buffers (buffers may hold -inf on purpose: attention masks).

    One pass over the weights where they live, with a single device sync.

    Raises:
        CheckpointError: naming ``source`` (the checkpoint) and the first bad tensor.
    """
    checks = [(name, torch.isfinite(tensor).all()) for name, tensor in model.named_parameters()
              if tensor.is_floating_point()]
    checks += [(name, ~torch.isnan(tensor).any()) for name, tensor in model.named_buffers()
               if tensor.is_floating_point()]
    if not checks:
        return
    good = torch.stack([ok for _, ok in checks]).cpu()
    if bool(good.all()):
        return
    bad = [name for (name, _), ok in zip(checks, good.tolist()) if not ok]
    cause = "the weights are damaged or come from a diverged training run"
    if dtype != torch.float32:
        cause += f", or overflow {str(dtype).removeprefix('torch.')} (try --dtype float32)"
    raise CheckpointError(f"{source}: {len(bad)} weight tensor(s) hold NaN or inf values (first: {bad[0]}): {cause}")


def model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of a model's parameters."""
    param = next(model.parameters())
    return param.device, param.dtype


def autocast_for(device: torch.device, dtype: torch.dtype):
    """Autocast to ``dtype`` on ``device`` for half-precision models; a no-op context for float32."""
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype != torch.float32)


class ExecutionPlan:
    """Where a stage model's parts run, and how lean the run is.

    Default: the whole model lives on ``device``. ``low_memory``: the model stays on the CPU
    and each part (encoders, UNet, autoencoder) visits ``device`` only for its phase; the
    guided UNet call runs as two half-size calls and the autoencoder decodes one frame at a
    time. Outputs are the same; peak memory is that of the largest part plus its activations.
    ``helpers``: further devices, each holding a copy of the UNet (:meth:`replicate`); with one,
    the conditional half of every guided UNet call runs there while ``device`` runs the
    unconditional half (:mod:`~sgm.pipelines.replicas`).
    """

    def __init__(self, device: torch.device, low_memory: bool = False, helpers: tuple[torch.device, ...] = ()):
        if low_memory and helpers:
            raise UsageError("low-memory mode runs on one device: choose it or several devices, not both")
        self.device = device
        self.low_memory = low_memory
        self.helpers = tuple(helpers)
        self._replicas: dict[int, torch.nn.Module] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hi3d-helper") if helpers else None

    @property
    def decode_chunk(self) -> int | None:
        return 1 if self.low_memory else None

    def replicate(self, network: torch.nn.Module) -> list[torch.nn.Module]:
        """Copies of ``network`` (a stage model's ``model``, the wrapped UNet) on the helper devices,
        made once; copy them before compiling ``network``."""
        if self.helpers and id(network) not in self._replicas:
            self._replicas[id(network)] = copy.deepcopy(network).to(self.helpers[0])
        return [self._replicas[id(network)]] if self.helpers else []

    def denoiser(self, model, num_frames: int) -> DenoiserFn:
        """The ``denoiser(x, sigma, cond)`` that a stage's sampler calls: split in two half-size
        calls in low-memory mode, its halves on two devices with a helper, else one call."""
        if self.helpers:
            (replica,) = self.replicate(model.model)
            return ParallelHalves(model.denoiser_fn(num_frames), model.denoiser_fn(num_frames, network=replica),
                                  self.helpers[0], self._pool)
        return model.denoiser_fn(num_frames, split_guidance=self.low_memory)

    @contextlib.contextmanager
    def phase(self, *modules: torch.nn.Module):
        """Run a phase with ``modules`` on the execution device. In low-memory mode they visit it
        for the phase only (:func:`visiting`)."""
        if not self.low_memory:
            yield
            return
        try:
            with contextlib.ExitStack() as stack:
                for module in modules:
                    stack.enter_context(visiting(module, self.device))
                yield
        finally:  # also after a failed phase (an out-of-memory error): the device copies' memory goes back
            if self.device.type == "cuda":
                torch.cuda.empty_cache()


@contextlib.contextmanager
def visiting(module: torch.nn.Module, device: torch.device):
    """``module`` on ``device`` for the block, then back where it was.

    Its parameters and buffers keep their original tensors during the block, so the way back
    drops the device copies instead of copying them back: inference changes no weight, and
    leaving costs nothing (the 2.84 GiB stage-2 UNet took 0.46 s to copy back to the CPU on an H200 machine).
    """
    kept = [(slots, name, tensor, tensor.data) for owner in module.modules()
            for slots in (owner._parameters, owner._buffers) for name, tensor in slots.items() if tensor is not None]
    module.to(device)
    try:
        yield module
    finally:
        for slots, name, tensor, data in kept:  # torch may have moved a tensor's data or replaced the tensor
            tensor.data = data
            slots[name] = tensor
