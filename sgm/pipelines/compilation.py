"""How an inference pipeline compiles a stage's UNet: at once, in the background, or not at all.

``torch.compile`` makes each full-size UNet call about 1.5x faster on an H100/H200, but compiling
one UNet costs about 135 s the first time a machine does it (about 20 s once torch's on-disk cache
holds the kernels), and a one-image run pays that before its first step (BENCHMARKS.md). So:

- ``"on"``: compile in place; the first UNet call of the process waits for the compilation.
- ``"background"``: the UNet runs eagerly; its first call hands a copy of its inputs to a child
  process that compiles the same network for exactly those inputs, filling torch's on-disk caches.
  Once the child is done, :meth:`BackgroundCompile.adopt` (the pipeline calls it before each run of
  the stage) compiles the UNet from those caches. The first image costs no compilation; later
  images get the compiled speed.
- ``"off"``: eager only.
- ``"auto"`` (the default): ``"background"`` on CUDA unless ``low_memory``, else ``"off"``;
  command lines that run a stage once make it ``"off"`` (:func:`for_single_run`), since a
  background compilation could not pay off before the process ends.

Compilation is static in shape (``dynamic=False``): the two stages' UNets (64x64 and 128x128
latents) share the code that torch compiles, and without it the second stage's compilation would
turn every size symbolic.
"""
from __future__ import annotations

import atexit
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from ..common.errors import UsageError
from .call_state import call_state, map_tensors
from .loading import PROJECT_ROOT

log = logging.getLogger(__name__)

COMPILE_CHOICES = ("auto", "on", "background", "off")
COMPILE_OPTIONS = {"dynamic": False}
# GPU bytes that must be free beyond what this process has reserved at the UNet's first call: the
# child's network and one call's activations (the stage-2 UNet at 1024 px: about 14 GiB) and this
# process's own activations, still to come.
CHILD_MEMORY_MARGIN = 24 * 2**30


def resolve_compile(choice: str | bool, device: torch.device, low_memory: bool) -> str:
    """``"on"``, ``"background"`` or ``"off"`` for a ``compile`` setting (see the module docstring).

    Low-memory runs move the UNet between devices, so ``"auto"`` leaves them eager. Booleans are
    accepted as ``"on"`` / ``"off"``.

    Raises:
        UsageError: an unknown setting.
    """
    if isinstance(choice, bool):
        return "on" if choice else "off"
    if choice not in COMPILE_CHOICES:
        raise UsageError(f"compile must be one of {COMPILE_CHOICES}, got {choice!r}")
    if choice == "auto":
        return "background" if device.type == "cuda" and not low_memory else "off"
    return choice


def for_single_run(choice: str | bool) -> str | bool:
    """The setting for a process that runs each stage once: ``"auto"`` becomes ``"off"``."""
    return "off" if choice == "auto" else choice


def on_cpu(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().cpu()


def module_state(module: nn.Module) -> dict:
    """What a compiled graph of ``module`` is keyed on besides its inputs' shapes: each parameter's
    dtype and ``requires_grad``, each buffer's dtype, the names of the modules in training mode."""
    def name_of(dtype: torch.dtype) -> str:
        return str(dtype).removeprefix("torch.")
    return {"parameters": {name: (name_of(p.dtype), p.requires_grad) for name, p in module.named_parameters()},
            "buffers": {name: name_of(b.dtype) for name, b in module.named_buffers()},
            "training": [name for name, m in module.named_modules() if m.training]}


class BackgroundCompile:
    """Compile ``module`` in another process from the inputs of its first call; it runs eagerly until :meth:`adopt`.

    At the module's first call a child process (:mod:`sgm.pipelines.precompile`) builds the same
    network from ``network_config`` (uninitialised weights of the same dtype), compiles it and runs it
    once on a copy of those inputs, in the caller's grad, autocast and TF32 state, which fills torch's
    on-disk caches (inductor's graphs and Triton's kernels) for exactly the calls that follow. The
    caller's process keeps running eagerly meanwhile: a child of its own, not a thread, because
    compiling holds Python's lock for most of two minutes and would stall the eager run (measured:
    the first image 23x slower). When the child has finished, :meth:`adopt` compiles ``module`` in
    place; its next call loads the compiled graphs and kernels from the caches instead of compiling them
    (in a process that finds them there, the whole compilation took 19 s instead of 116 s on an H100).

    The child needs GPU memory of its own (the network and one call's activations): it is started only
    when the device has at least :data:`CHILD_MEMORY_MARGIN` free beyond what this process holds. A
    failed child leaves the module eager, with one warning naming its log. The child is ended with
    this process. A UNet whose convolutions the GPU self-check rerouted (strict fp32 on a cuDNN with
    wrong kernels) is not the child's network: :meth:`adopt` then compiles it anew, as ``"on"`` would.
    """

    def __init__(self, module: nn.Module, name: str, network_config: dict):
        self.module = module
        self.name = name
        self.network_config = network_config
        self.child: subprocess.Popen | None = None
        self.folder: Path | None = None
        self._settled = False  # adopted, failed, or never started for want of memory
        self.adopted = False
        self._hook = module.register_forward_pre_hook(self._start, with_kwargs=True)

    def _start(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._hook.remove()
        device = next(module.parameters()).device
        if not self._room_for_child(device):
            return
        self.folder = Path(tempfile.mkdtemp(prefix="hi3d-precompile-"))
        torch.save({"network_config": self.network_config, "device": str(device), **module_state(module),
                    "state": call_state(device.type),
                    "args": map_tensors(args, on_cpu), "kwargs": map_tensors(kwargs, on_cpu)}, self.folder / "call.pt")
        log_file = open(self.folder / "log.txt", "w")
        # run from the checkout, where ``-m sgm...`` finds this package
        self.child = subprocess.Popen([sys.executable, "-m", "sgm.pipelines.precompile", str(self.folder / "call.pt")],
                                      stdout=log_file, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT)
        log_file.close()
        _children[self.child] = self.folder
        log.info("%s: compiling the UNet in a background process; the UNet runs eagerly until it is done", self.name)

    def _room_for_child(self, device: torch.device) -> bool:
        if device.type != "cuda":
            return True
        free, _ = torch.cuda.mem_get_info(device)
        needed = torch.cuda.memory_reserved(device) + CHILD_MEMORY_MARGIN
        if free < needed:
            log.info("%s: %.1f GiB free on %s, %.1f GiB needed to compile in the background: the UNet stays eager",
                     self.name, free / 2**30, device, needed / 2**30)
            self._settled = True
            return False
        return True

    @property
    def started(self) -> bool:
        return self.child is not None

    @property
    def done(self) -> bool:
        """Whether the child has finished (successfully or not)."""
        return self.child is not None and self.child.poll() is not None

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the child (at most ``timeout`` seconds); whether it has finished."""
        if self.child is not None:
            try:
                self.child.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        return self.done

    def adopt(self) -> bool:
        """Compile the module in place if the child has filled the caches; whether it is compiled now."""
        if self._settled or not self.done:
            return self.adopted
        self._settled = True
        _children.pop(self.child, None)
        if self.child.returncode != 0:
            (self.folder / "call.pt").unlink(missing_ok=True)  # the inputs; the log stays for the warning
            log.warning("%s: compiling the UNet in the background failed (exit code %s, log: %s); it stays eager",
                        self.name, self.child.returncode, self.folder / "log.txt")
            return False
        shutil.rmtree(self.folder, ignore_errors=True)
        self.module.compile(**COMPILE_OPTIONS)
        self.adopted = True
        log.info("%s: compiled UNet in use from this run on (its first call loads the kernels from the cache)",
                 self.name)
        return True


_children: dict[subprocess.Popen, Path] = {}  # running children and their folders


@atexit.register
def _end_children() -> None:
    """End background compilations still running when the process exits, and remove their folders."""
    for child, folder in list(_children.items()):
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(5)
            except subprocess.TimeoutExpired:
                child.kill()
        shutil.rmtree(folder, ignore_errors=True)
        _children.pop(child, None)


def compile_unet(unet: nn.Module, mode: str, name: str, network_config: dict) -> BackgroundCompile | None:
    """Apply a resolved ``mode`` (:func:`resolve_compile`) to ``unet`` (built from ``network_config``):
    compile it in place (``"on"``), start watching for its first call (``"background"``: the returned
    object's :meth:`~BackgroundCompile.adopt` switches it over) or leave it eager (``"off"``)."""
    if mode == "on":
        unet.compile(**COMPILE_OPTIONS)  # in place: state-dict keys unchanged
        return None
    if mode == "background":
        return BackgroundCompile(unet, name, network_config)
    return None
