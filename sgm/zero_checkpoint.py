"""Reading DeepSpeed ZeRO stage 1/2 checkpoint folders without DeepSpeed and without unpickling code.

Lightning's ``deepspeed_stage_2`` strategy saves ``last.ckpt`` as a folder::

    last.ckpt/
        latest                                   # the tag, "checkpoint"
        checkpoint/mp_rank_00_model_states.pt    # module weights in the training dtype, shapes, Lightning state
        checkpoint/[bf16_]zero_pp_rank_<r>_mp_rank_00_optim_states.pt   # rank r's float32 master partition

The float32 weights of the trained parameters exist only as the ranks' flat partitions of the
master copy: each parameter group is flattened in the order of ``param_shapes``, split across
``dp_world_size`` ranks (padding at the very end removed when saved), with optional alignment
padding after each parameter (``param_alignment_paddings``). Frozen parameters and buffers are
taken from the module weights, in the dtype they were trained in (DeepSpeed's 16/bf16 modes hold
the whole module in half precision). Keys lose Lightning's and DeepSpeed's wrapper prefixes.

The optimizer files pickle a few DeepSpeed objects (loss scaler, ZeRO stage enum, fragment
addresses); they are read with ``torch.load(weights_only=True)`` and each such ``deepspeed.*``
global rebuilt as an inert stand-in holding its saved fields, so no code of the file runs.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import torch

MODEL_STATES = "mp_rank_00_model_states.pt"
OPTIM_STATES = re.compile(r"^(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_00_optim_states\.pt$")
WRAPPER_PREFIXES = ("_forward_module.", "module.")
UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+) was not an allowed global")
MAX_STAND_INS = 32


class ZeroCheckpointError(RuntimeError):
    """A folder is not a readable DeepSpeed ZeRO checkpoint."""


class _StandIn:
    """Inert replacement of a pickled DeepSpeed object: keeps constructor arguments and state."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state


def _stand_in(full_name: str):
    """A stand-in class whose pickle path is ``full_name``."""
    module, _, name = full_name.rpartition(".")
    return type(name, (_StandIn,), {"__module__": module, "__qualname__": name})


def load_weights_only(path: Path) -> dict:
    """``torch.load(path, weights_only=True)``, with ``deepspeed.*`` globals rebuilt as stand-ins."""
    allowed: list[tuple[type, str]] = []
    for _ in range(MAX_STAND_INS):
        try:
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            match = UNSUPPORTED_GLOBAL.search(str(err))
            if match is None or not match.group(1).startswith("deepspeed."):
                raise ZeroCheckpointError(f"cannot read {path} with weights_only=True: {err}") from err
            allowed.append((_stand_in(match.group(1)), match.group(1)))
    raise ZeroCheckpointError(f"{path}: more than {MAX_STAND_INS} DeepSpeed objects pickled in it")


def checkpoint_folder(path: str | Path) -> Path:
    """The folder holding ``mp_rank_00_model_states.pt``: ``path`` itself, or its tag sub-folder
    (named in ``path/latest``, else the only sub-folder that holds the file).

    Raises:
        ZeroCheckpointError: if there is no such folder.
    """
    path = Path(path)
    if (path / MODEL_STATES).is_file():
        return path
    latest = path / "latest"
    if latest.is_file() and (path / latest.read_text().strip() / MODEL_STATES).is_file():
        return path / latest.read_text().strip()
    found = sorted(p.parent for p in path.glob(f"*/{MODEL_STATES}"))
    if len(found) == 1:
        return found[0]
    raise ZeroCheckpointError(f"{path} is not a DeepSpeed checkpoint folder: expected {MODEL_STATES} in it or in "
                              f"one sub-folder, found {len(found)}")


def is_zero_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a DeepSpeed checkpoint folder (see :func:`checkpoint_folder`)."""
    try:
        return Path(path).is_dir() and checkpoint_folder(path) is not None
    except ZeroCheckpointError:
        return False


def read_model_states(path: str | Path) -> dict:
    """The model-states file of a checkpoint folder (weights, shapes and Lightning's saved state)."""
    return load_weights_only(checkpoint_folder(path) / MODEL_STATES)


def saved_world_size(path: str | Path) -> int:
    """Number of data-parallel ranks that saved the checkpoint folder ``path``."""
    return int(read_model_states(path)["dp_world_size"])


def _strip_wrappers(name: str) -> str:
    for prefix in WRAPPER_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def _optimizer_partitions(folder: Path, world_size: int) -> list[dict]:
    files = {int(m.group(1)): p for p in folder.iterdir() if (m := OPTIM_STATES.match(p.name))}
    if sorted(files) != list(range(world_size)):
        raise ZeroCheckpointError(f"{folder}: expected optimizer files of ranks 0..{world_size - 1}, "
                                  f"found ranks {sorted(files)}")
    states = [load_weights_only(files[rank])["optimizer_state_dict"] for rank in range(world_size)]
    stages = {int(getattr(s["zero_stage"], "args", (s["zero_stage"],))[0]) for s in states}
    if not stages <= {1, 2}:
        raise ZeroCheckpointError(f"{folder}: ZeRO stage {sorted(stages)}; only stages 1 and 2 are read here")
    return states


def _unflatten_group(flat: torch.Tensor, shapes: Mapping[str, torch.Size], paddings: list[int] | None,
                     source: Path) -> dict[str, torch.Tensor]:
    tensors, offset = {}, 0
    for index, (name, shape) in enumerate(shapes.items()):
        numel = shape.numel()
        if offset + numel > flat.numel():
            raise ZeroCheckpointError(f"{source}: the float32 partitions hold {flat.numel()} values, too few for "
                                      f"{name} at offset {offset}")
        tensors[name] = flat[offset:offset + numel].view(shape).clone()
        offset += numel + (paddings[index] if paddings else 0)
    return tensors


def read_zero_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Every weight of a ZeRO stage 1/2 checkpoint folder: trained parameters in float32 from the
    master partitions, frozen parameters and buffers as saved; keys without wrapper prefixes.

    Raises:
        ZeroCheckpointError: naming the folder and what is missing or inconsistent.
    """
    folder = checkpoint_folder(path)
    states = load_weights_only(folder / MODEL_STATES)
    for key in ("module", "param_shapes", "dp_world_size"):
        if key not in states:
            raise ZeroCheckpointError(f"{folder / MODEL_STATES}: no '{key}' entry (not a DeepSpeed model-states file)")
    weights = OrderedDict((k, v) for k, v in states["module"].items() if isinstance(v, torch.Tensor))
    partitions = _optimizer_partitions(folder, int(states["dp_world_size"]))
    for group, shapes in enumerate(states["param_shapes"]):
        flat = torch.cat([p["single_partition_of_fp32_groups"][group].float() for p in partitions])
        paddings = partitions[0].get("param_alignment_paddings")
        trained = _unflatten_group(flat, shapes, paddings[group] if paddings else None, folder)
        used = sum(shape.numel() for shape in shapes.values()) + sum(paddings[group] if paddings else ())
        if not 0 <= flat.numel() - used < 2 * len(partitions):  # ZeRO-2 aligns a group to 2 x world size
            raise ZeroCheckpointError(f"{folder}: parameter group {group} has {flat.numel()} float32 values for "
                                      f"{used} expected; the shapes and partitions do not match")
        for name, tensor in trained.items():
            if name not in weights:
                raise ZeroCheckpointError(f"{folder}: trained parameter {name} is not among the module weights")
            weights[name] = tensor
    return OrderedDict((_strip_wrappers(k), v) for k, v in weights.items())
