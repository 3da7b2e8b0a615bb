"""Do this device's convolution kernels compute what they should? A self-check against float64.

Found on an H200 (torch 2.11+cu130, cuDNN 9.19, issue 20): strict float32 3x3 convolutions (TF32
off) return results 56-94 % away from float64 for some shapes of the full-size UNets (e.g.
1920->1280 channels on (16, 1920, 32, 32)), while the same shapes with TF32, in fp16/bf16 or
through PyTorch's own kernels are right. Which shapes fail depends on the torch and cuDNN builds and
the GPU, so nothing here names shapes: a run lists the convolutions it will execute
(:func:`record_conv_shapes`), checks each one in its precision (:func:`check_shape`), and
:func:`ensure_trustworthy_convolutions` routes the failing ones through a path that passes.

How a shape is checked (:func:`check_shape`): an input ~ N(0, 1) (activations after GroupNorm) and
weights and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's default initialisation, so
outputs are O(1) like the real ones) are drawn in float32 and rounded to the precision's dtype.
The convolution under test runs on the whole batch (the kernel cuDNN picks depends on it); the
reference is the float64 convolution of the same rounded tensors, through PyTorch's own kernels
(cuDNN off), on the first and last batch elements only (a convolution treats batch elements
independently, so this costs 2/N of a full float64 pass), on the same device, or on the CPU where
float64 convolutions are unsupported. The error is ||out - ref|| / ||ref|| over those elements;
``backward=True`` also compares the input and weight gradients of a random output gradient that is
zero outside those elements (the kernels still run on the whole batch).

Thresholds (:data:`THRESHOLDS`), from the unit roundoff u of each format: the reference starts
from the same rounded inputs, so what is left is the kernel's own rounding.

- ``fp32`` (strict, u = 6e-8): summing K <= 3e4 products gives about u*sqrt(K) = 1e-5 with
  Winograd/FFT algorithms; 1e-4 leaves 10x margin and is still 1e-3 of the failures seen;
- ``fp32-tf32`` (inputs rounded inside the kernel to 10 mantissa bits, u = 4.9e-4): about 4e-4
  expected (3e-4 measured on the H200); 5e-3;
- ``fp16`` (output rounded to float16, u = 4.9e-4; accumulation in float32): about 3e-4; 5e-3;
- ``bf16`` (u = 3.9e-3): about 2e-3 (3e-3 measured); 3e-2.

Everything here is plain torch: no ``sgm`` import (the bottom layer).
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

log = logging.getLogger(__name__)

THRESHOLDS = {"fp32": 1e-4, "fp32-tf32": 5e-3, "fp16": 5e-3, "bf16": 3e-2}
PRECISION_DTYPES = {"fp32": torch.float32, "fp32-tf32": torch.float32, "fp16": torch.float16,
                    "bf16": torch.bfloat16}
CACHE_ENV = "HI3D_CONV_CHECK_CACHE"


class ConvolutionKernelWarning(UserWarning):
    """Some convolution shapes fail the self-check on this device and now take another path."""


@dataclass(frozen=True)
class ConvShape:
    """One distinct convolution a model runs: ``torch.convolution`` arguments and the input size.

    Attributes:
        batch: N of the (N, C_in, *spatial) input (frames x clips for the video models).
        in_channels, out_channels: C_in and C_out.
        spatial: the input's spatial size, (H, W) or (T, H, W), in elements.
        kernel, stride, padding, dilation: per spatial dimension.
        groups: channel groups.
        transposed: a transposed convolution (then ``output_padding`` applies).
    """

    batch: int
    in_channels: int
    out_channels: int
    spatial: tuple[int, ...]
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int = 1
    transposed: bool = False
    output_padding: tuple[int, ...] = ()

    @property
    def input_size(self) -> tuple[int, ...]:
        return (self.batch, self.in_channels, *self.spatial)

    @property
    def weight_size(self) -> tuple[int, ...]:
        if self.transposed:
            return (self.in_channels, self.out_channels // self.groups, *self.kernel)
        return (self.out_channels, self.in_channels // self.groups, *self.kernel)

    @property
    def fan_in(self) -> int:
        """Products summed per output element (the K of the error estimates)."""
        return self.weight_size[1] * math.prod(self.kernel)

    def layer_key(self) -> tuple:
        """What a layer fixes (everything but the input size): matches a conv module to this shape."""
        return (self.in_channels, self.out_channels, self.kernel, self.stride, self.padding, self.dilation,
                self.groups, self.transposed)

    def __str__(self) -> str:
        """E.g. ``Conv2d 1920->1280 k3x3 p1x1 on (16, 1920, 32, 32)`` (stride/dilation 1, groups 1 left out)."""
        def dims(values):
            return "x".join(map(str, values))
        parts = [f"Conv{len(self.kernel)}d{'T' if self.transposed else ''}",
                 f"{self.in_channels}->{self.out_channels}", f"k{dims(self.kernel)}"]
        parts += [f"s{dims(self.stride)}"] if set(self.stride) != {1} else []
        parts += [f"p{dims(self.padding)}"] if set(self.padding) != {0} else []
        parts += [f"d{dims(self.dilation)}"] if set(self.dilation) != {1} else []
        parts += [f"g{self.groups}"] if self.groups != 1 else []
        return " ".join(parts) + f" on {self.input_size}"

    @classmethod
    def from_json(cls, data: dict) -> "ConvShape":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


# ---------------------------------------------------------------------------------------- shapes
class _ConvRecorder(TorchDispatchMode):
    """Records every ``aten.convolution`` call (nn.Conv*, F.conv*, on any device, meta included)."""

    def __init__(self):
        super().__init__()
        self.shapes: dict[ConvShape, None] = {}  # ordered set

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten.convolution.default:
            x, weight, _, stride, padding, dilation, transposed, output_padding, groups = args
            out_channels = weight.shape[1] * groups if transposed else weight.shape[0]
            self.shapes[ConvShape(
                batch=x.shape[0], in_channels=x.shape[1], out_channels=out_channels, spatial=tuple(x.shape[2:]),
                kernel=tuple(weight.shape[2:]), stride=tuple(stride), padding=tuple(padding),
                dilation=tuple(dilation), groups=groups, transposed=bool(transposed),
                output_padding=tuple(output_padding) if transposed else ())] = None
        return func(*args, **kwargs)


def record_conv_shapes(run: Callable[[], object]) -> list[ConvShape]:
    """The distinct convolutions that ``run()`` executes, in first-run order.

    Run it on meta tensors (a model built under ``torch.device("meta")``) to list a full-size
    model's convolutions in seconds without memory: shapes propagate, nothing is computed.
    """
    recorder = _ConvRecorder()
    with recorder:
        run()
    return list(recorder.shapes)


# ---------------------------------------------------------------------------------------- flags
def conv_tf32_enabled() -> bool:
    """Whether cuDNN convolutions of float32 tensors may use TF32 (PyTorch's default: yes)."""
    try:
        return bool(torch.backends.cudnn.allow_tf32)
    except RuntimeError:  # torch >= 2.9 with the legacy and new flags mixed: ask the conv flag itself
        return torch.backends.cudnn.conv.fp32_precision == "tf32"


def set_conv_tf32(enabled: bool) -> None:
    """Through the legacy flag, which keeps cuDNN's conv and RNN flags equal (torch's own readers,
    e.g. inductor, refuse a mixed state)."""
    torch.backends.cudnn.allow_tf32 = enabled


@contextlib.contextmanager
def cudnn_state(enabled: bool | None = None, tf32: bool | None = None):
    """Set cuDNN's ``enabled`` / TF32 flags (None: leave as is) inside the block; restore them after."""
    old_enabled, old_tf32 = torch.backends.cudnn.enabled, conv_tf32_enabled()
    try:
        if enabled is not None:
            torch.backends.cudnn.enabled = enabled
        if tf32 is not None and tf32 != old_tf32:
            set_conv_tf32(tf32)
        yield
    finally:
        torch.backends.cudnn.enabled = old_enabled
        if tf32 is not None and tf32 != old_tf32:
            set_conv_tf32(old_tf32)


def precision_of(dtype: torch.dtype) -> str:
    """The precision convolutions of ``dtype`` run in now: fp32 / fp32-tf32 (by cuDNN's TF32 flag) / fp16 / bf16."""
    if dtype == torch.float32:
        return "fp32-tf32" if conv_tf32_enabled() else "fp32"
    for name, known in PRECISION_DTYPES.items():
        if known == dtype:
            return name
    raise ValueError(f"no convolution check for dtype {dtype}: use float32, float16 or bfloat16")


# ---------------------------------------------------------------------------------------- check
ConvFn = Callable[..., torch.Tensor]
"""``conv(input, weight, bias, shape)`` -> output: the convolution under test."""


def device_convolution(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, shape: ConvShape):
    """The convolution as a model runs it (cuDNN on CUDA, with the current flags)."""
    return torch.convolution(x, weight, bias, shape.stride, shape.padding, shape.dilation, shape.transposed,
                             shape.output_padding or (0,) * len(shape.kernel), shape.groups)


def native_convolution(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, shape: ConvShape):
    """The same convolution through PyTorch's own kernels (cuDNN off)."""
    with cudnn_state(enabled=False):
        return device_convolution(x, weight, bias, shape)


@dataclass(frozen=True)
class ShapeResult:
    """One shape's check: ``error`` the relative error against float64 (the largest of output,
    input-gradient and weight-gradient errors when the backward was checked)."""

    shape: ConvShape
    precision: str
    error: float
    threshold: float
    backward: bool = False

    @property
    def passed(self) -> bool:
        return self.error < self.threshold  # NaN fails

    def to_json(self) -> dict:
        return {"shape": asdict(self.shape), "precision": self.precision, "error": self.error,
                "threshold": self.threshold, "backward": self.backward}


def _relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    value, reference = value.to(reference.device, torch.float64), reference
    return float((value - reference).norm() / reference.norm().clamp_min(1e-300))


def _reference(shape: ConvShape, x, weight, bias, grad, device: torch.device, backward: bool):
    """Float64 output (and input/weight gradients) through PyTorch's own kernels, on ``device`` or the CPU."""
    for where in (device, torch.device("cpu")):
        try:
            xs, ws = (t.to(where, torch.float64).requires_grad_(backward) for t in (x, weight))
            bs = bias.to(where, torch.float64)
            with torch.enable_grad() if backward else contextlib.nullcontext():
                out = native_convolution(xs, ws, bs, shape)
                grads = torch.autograd.grad(out, (xs, ws), grad.to(where, torch.float64)) if backward else ()
            return out.detach(), grads
        except (RuntimeError, TypeError, NotImplementedError):
            if where.type == "cpu":
                raise
    raise AssertionError("unreachable")


def check_shape(shape: ConvShape, device: torch.device | str, precision: str, conv: ConvFn | None = None,
                backward: bool = False, seed: int = 0) -> ShapeResult:
    """Run ``shape`` in ``precision`` on ``device`` and compare with float64 (see the module docstring).

    Args:
        conv: the convolution under test (default :func:`device_convolution`); tests pass a wrong one.
        backward: also compare the gradients (training).
    """
    if precision not in THRESHOLDS:
        raise ValueError(f"unknown precision {precision!r}: choose one of {sorted(THRESHOLDS)}")
    device, conv = torch.device(device), conv or device_convolution
    dtype = PRECISION_DTYPES[precision]
    generator = torch.Generator(device).manual_seed(seed)
    bound = shape.fan_in ** -0.5

    def uniform(size):
        return (torch.rand(size, generator=generator, device=device) * 2 - 1) * bound

    x = torch.randn(shape.input_size, generator=generator, device=device).to(dtype)
    weight, bias = uniform(shape.weight_size).to(dtype), uniform((shape.out_channels,)).to(dtype)
    rows = sorted({0, shape.batch - 1})
    with cudnn_state(tf32=precision == "fp32-tf32" if dtype == torch.float32 else None):
        if backward:
            xg, wg = x.clone().requires_grad_(), weight.clone().requires_grad_()
            with torch.enable_grad():
                out = conv(xg, wg, bias, shape)
            grad = torch.zeros_like(out)
            grad[rows] = torch.randn((len(rows), *out.shape[1:]), generator=generator, device=device).to(dtype)
            grad_x, grad_w = torch.autograd.grad(out, (xg, wg), grad)
            out, grad_x = out.detach()[rows], grad_x[rows]
            del xg, wg
        else:
            with torch.no_grad():
                out = conv(x, weight, bias, shape)[rows]
    ref, ref_grads = _reference(shape, x[rows], weight, bias, grad[rows] if backward else None, device, backward)
    errors = [_relative_error(out, ref)]
    if backward:
        errors += [_relative_error(grad_x, ref_grads[0]), _relative_error(grad_w, ref_grads[1])]
    error = max(errors) if all(e == e for e in errors) else float("nan")
    return ShapeResult(shape, precision, error, THRESHOLDS[precision], backward)


def check_shapes(shapes: Iterable[ConvShape], device, precision: str, conv: ConvFn | None = None,
                 backward: bool = False) -> list[ShapeResult]:
    """:func:`check_shape` for each shape, freeing the device's cached memory between large ones."""
    results = []
    for shape in shapes:
        results.append(check_shape(shape, device, precision, conv=conv, backward=backward))
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
    return results


def format_table(results: Sequence[ShapeResult]) -> str:
    """One line per shape: shape, precision, relative error, threshold, PASS/FAIL."""
    lines = [f"{'shape':<64} {'precision':<10} {'rel. error':>10} {'threshold':>9}  result"]
    for r in results:
        lines.append(f"{str(r.shape):<64} {r.precision + ('+bwd' if r.backward else ''):<10} {r.error:>10.2e} "
                     f"{r.threshold:>9.0e}  {'pass' if r.passed else 'FAIL'}")
    return "\n".join(lines)


def versions(device: torch.device) -> str:
    """``torch X, cuDNN Y, <GPU name>``: what the results depend on."""
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return f"torch {torch.__version__}, cuDNN {cudnn}, {name}"


# ---------------------------------------------------------------------------------------- guard
_CHECKED: dict[tuple[str, str, bool, ConvShape], ShapeResult] = {}
_WARNED: set[tuple[str, str]] = set()


def _cache_file(device: torch.device, precision: str, backward: bool) -> Path | None:
    folder = os.environ.get(CACHE_ENV, str(Path.home() / ".cache" / "hi3d" / "conv-check"))
    if not folder or device.type != "cuda":
        return None
    key = f"{versions(device)} {precision}{' bwd' if backward else ''}"
    safe = "".join(c if c.isalnum() or c in ".-" else "_" for c in key)
    return Path(folder) / f"{safe}.json"


def _read_disk(path: Path | None) -> dict[ConvShape, ShapeResult]:
    if path is None or not path.is_file():
        return {}
    try:
        rows = json.loads(path.read_text())
        return {r.shape: r for r in (ShapeResult(ConvShape.from_json(d["shape"]), d["precision"], d["error"],
                                                 THRESHOLDS[d["precision"]], d["backward"]) for d in rows)}
    except (OSError, ValueError, KeyError, TypeError):
        return {}  # an unreadable cache is re-measured


def _write_disk(path: Path | None, results: Iterable[ShapeResult]) -> None:
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps([r.to_json() for r in results], indent=0))
        tmp.replace(path)
    except OSError as err:
        log.info("convolution self-check results not cached on disk (%s)", err)


def checked_results(shapes: Sequence[ConvShape], device, precision: str, conv: ConvFn | None = None,
                    backward: bool = False) -> list[ShapeResult]:
    """Results for ``shapes``, each measured once per process and, on CUDA, once per torch / cuDNN /
    GPU in the on-disk cache (folder ``$HI3D_CONV_CHECK_CACHE``, default ``~/.cache/hi3d/conv-check``;
    empty: no disk cache). An injected ``conv`` is measured every time and never cached."""
    device, shapes = torch.device(device), list(dict.fromkeys(shapes))
    if conv is not None:
        return check_shapes(shapes, device, precision, conv=conv, backward=backward)
    tag = (str(device), precision, backward)
    missing = [s for s in shapes if (*tag, s) not in _CHECKED]
    if missing:
        path = _cache_file(device, precision, backward)
        disk = _read_disk(path)
        todo = [s for s in missing if s not in disk]
        if todo:
            log.info("checking %d convolution shape(s) in %s on %s against float64", len(todo), precision, device)
        fresh = check_shapes(todo, device, precision, backward=backward)
        for result in [disk[s] for s in missing if s in disk] + fresh:
            _CHECKED[(*tag, result.shape)] = result
        if fresh:
            _write_disk(path, {**disk, **{r.shape: r for r in fresh}}.values())
    return [_CHECKED[(*tag, s)] for s in shapes]


def forget_checks() -> None:
    """Drop the in-memory results and the once-per-process warning record (tests)."""
    _CHECKED.clear()
    _WARNED.clear()


class _NativeConvolution(torch.autograd.Function):
    """A convolution whose forward and backward both run PyTorch's own kernels (cuDNN off)."""

    @staticmethod
    def forward(ctx, x, weight, bias, shape):
        ctx.save_for_backward(x, weight)
        ctx.shape, ctx.has_bias = shape, bias is not None
        return native_convolution(x, weight, bias, shape)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        s = ctx.shape
        with cudnn_state(enabled=False):
            gx, gw, gb = torch.ops.aten.convolution_backward(
                grad, x, weight, [s.out_channels] if ctx.has_bias else None, s.stride, s.padding, s.dilation,
                s.transposed, s.output_padding or (0,) * len(s.kernel), s.groups,
                [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]])
        return gx, gw, gb, None


@torch.compiler.disable  # runs eagerly between compiled graphs: cuDNN's flag is read at run time
def _routed_conv_forward(module: nn.Module, failing: frozenset, original, x, weight, bias):
    shape = ConvShape(batch=x.shape[0], in_channels=x.shape[1], out_channels=module.out_channels,
                      spatial=tuple(x.shape[2:]), kernel=tuple(module.kernel_size), stride=tuple(module.stride),
                      padding=tuple(module.padding), dilation=tuple(module.dilation), groups=module.groups)
    if shape not in failing:
        return original(x, weight, bias)
    return _NativeConvolution.apply(x, weight, bias, shape)


def _module_key(module: nn.Module) -> tuple:
    return (module.in_channels, module.out_channels, tuple(module.kernel_size), tuple(module.stride),
            tuple(module.padding), tuple(module.dilation), module.groups, False)


def route_to_native(model: nn.Module, failing: Iterable[ConvShape]) -> tuple[list[str], list[ConvShape]]:
    """Make the conv layers of ``model`` that run a ``failing`` shape use PyTorch's own kernels for
    inputs of that shape (forward and backward); other inputs keep cuDNN.

    Only nn.Conv1d/2d/3d with zero padding are rerouted (through their ``_conv_forward``).

    Returns:
        (the rerouted layers' names, the failing shapes no layer of ``model`` runs: functional or
        transposed convolutions, which need the global switch).
    """
    failing = frozenset(failing)
    keys, matched, routed = {s.layer_key() for s in failing}, set(), []
    for name, module in model.named_modules():
        if type(module) not in (nn.Conv1d, nn.Conv2d, nn.Conv3d) or module.padding_mode != "zeros":
            continue
        key = _module_key(module)
        if key in keys:
            matched.add(key)
            if not hasattr(module, "_native_route"):
                original = module._conv_forward
                module._conv_forward = functools.partial(_routed_conv_forward, module, failing, original)
                module._native_route = failing
                routed.append(name)
    return routed, [s for s in failing if s.layer_key() not in matched]


@dataclass
class GuardReport:
    """What :func:`guard_convolutions` found and did.

    Attributes:
        precision: the precision checked (fp32, fp32-tf32, fp16, bf16).
        results: one per distinct shape.
        action: "none" (all passed), "tf32" (TF32 turned on for cuDNN convolutions),
            "native-layers" (the failing shapes' layers use PyTorch's kernels), "native-global"
            (cuDNN turned off for the whole process).
        routed: the rerouted layers' names ("native-layers").
    """

    precision: str
    results: list[ShapeResult]
    action: str = "none"
    routed: list[str] = field(default_factory=list)

    @property
    def failing(self) -> list[ShapeResult]:
        return [r for r in self.results if not r.passed]


def guard_convolutions(model_or_shapes: nn.Module | Sequence[ConvShape], device, dtype: torch.dtype,
                       allow_tf32: bool, shapes: Sequence[ConvShape] | None = None, conv: ConvFn | None = None,
                       backward: bool = False) -> GuardReport:
    """Check the shapes (``model_or_shapes`` when it is a list, else ``shapes``) in the precision
    ``dtype`` runs in now; when some fail, switch them to a path that passes and warn once.

    The switch: TF32 for cuDNN convolutions when ``dtype`` is float32 with TF32 off and
    ``allow_tf32`` (if the failing shapes pass in TF32); otherwise PyTorch's own kernels, for the
    failing shapes' layers when a model is given (:func:`route_to_native`), else for everything
    (``torch.backends.cudnn.enabled = False``). The cost of either path is the GPU's to measure.

    Args:
        conv: the convolution under test (default: the device's, cached); tests inject a wrong one.
        backward: check the gradients too (training).
    """
    device = torch.device(device)
    model = model_or_shapes if isinstance(model_or_shapes, nn.Module) else None
    if model is not None and shapes is None:
        raise ValueError("a model needs the list of its convolution shapes (record_conv_shapes)")
    shapes = list(shapes if shapes is not None else model_or_shapes)
    precision = precision_of(dtype)
    report = GuardReport(precision, checked_results(shapes, device, precision, conv=conv, backward=backward))
    failing = [r.shape for r in report.failing]
    if not failing:
        return report
    if precision == "fp32" and allow_tf32:
        if all(r.passed for r in checked_results(failing, device, "fp32-tf32", conv=conv, backward=backward)):
            set_conv_tf32(True)
            report.action = "tf32"
    if report.action == "none":
        native = check_shapes(failing, device, precision, conv=native_convolution, backward=backward)
        if not all(r.passed for r in native):
            log.error("PyTorch's own kernels fail too:\n%s", format_table(native))
        routed, unmatched = route_to_native(model, failing) if model is not None else ([], failing)
        report.routed = routed
        if unmatched:
            torch.backends.cudnn.enabled = False
            report.action = "native-global"
        else:
            report.action = "native-layers"
    _warn_once(report, device)
    return report


def _warn_once(report: GuardReport, device: torch.device) -> None:
    if (str(device), report.precision) in _WARNED:
        return
    _WARNED.add((str(device), report.precision))
    what = {"tf32": "TF32 is now on for cuDNN convolutions (torch.backends.cudnn.allow_tf32 = True)",
            "native-layers": f"{len(report.routed)} layer(s) now run them through PyTorch's own kernels",
            "native-global": "cuDNN is now off for this process (torch.backends.cudnn.enabled = False)"}
    shapes = "; ".join(f"{r.shape} ({r.error:.1e})" for r in report.failing)
    warnings.warn(f"{len(report.failing)} convolution shape(s) return wrong {report.precision} results on "
                  f"{versions(device)} (relative error vs float64 over {report.failing[0].threshold:.0e}): "
                  f"{shapes}. {what[report.action]}.", ConvolutionKernelWarning, stacklevel=3)


def ensure_trustworthy_convolutions(model_or_shapes: nn.Module | Sequence[ConvShape], device, dtype: torch.dtype,
                                    allow_tf32: bool,
                                    shapes: Callable[[], Sequence[ConvShape]] | Sequence[ConvShape] | None = None,
                                    backward: bool = False) -> GuardReport | None:
    """:func:`guard_convolutions` on CUDA devices with cuDNN on; nothing at all elsewhere (None).

    ``shapes`` may be a callable, called only then (listing a full model's shapes on meta
    tensors takes seconds).
    """
    device = torch.device(device)
    if device.type != "cuda" or not torch.backends.cudnn.is_available() or not torch.backends.cudnn.enabled:
        return None
    listed = shapes() if callable(shapes) else shapes
    return guard_convolutions(model_or_shapes, device, dtype, allow_tf32, shapes=listed, backward=backward)
