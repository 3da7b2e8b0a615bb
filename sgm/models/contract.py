"""The conditioning contract of a diffusion config, checked before any weight is made.

A stage's conditioning has to fit its UNet: the ``vector`` outputs of the embedders, summed,
are the UNet's ``adm_in_channels``; the ``crossattn`` width is its ``context_dim``; the
``concat`` channels plus the noisy latent's channels are its ``in_channels``; the guider and
the loss work on clips of ``num_samples`` frames; and the keys zeroed for the unconditional
half are read by some embedder. A config that breaks one of these used to fail deep inside
the first forward pass; :func:`check_conditioning` finds it when the model is built, naming
the YAML keys that disagree.

How: the model is built on the meta device (no memory, no files read: random encoders, no
checkpoint), and the stage's own ``add_custom_cond`` and each embedder run on a meta batch of
one clip at the model's resolution: only shapes flow. Under a second for the tiny stage-1
config on a CPU, a few seconds for the full-size ones.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf

from ..modules.encoders.conditioner import CONCAT_DIM, route
from ..modules.encoders.pretrained import random_pretrained_weights
from ..targets import get_obj_from_str
from ..util import ConfigError, instantiate_from_config
from .diffusion import DiffusionEngine

PARAMS = "model.params"
NETWORK = f"{PARAMS}.network_config.params"
EMBEDDERS = f"{PARAMS}.conditioner_config.params.emb_models"


@dataclass(frozen=True)
class EmbedderWidth:
    """One embedder's output: where it goes (``vector`` / ``crossattn`` / ``concat``) and its width."""

    index: int
    name: str
    input_key: str
    slot: str
    width: int

    def describe(self) -> str:
        return f"emb_models[{self.index}] {self.name} ({self.input_key!r}): {self.width}"


def _engine_class(config: DictConfig):
    cls = get_obj_from_str(config.model.target)
    return cls if isinstance(cls, type) and issubclass(cls, DiffusionEngine) else None


def _shape_only_model(config: DictConfig) -> DiffusionEngine:
    """The model of ``config`` on the meta device: random encoders, no checkpoint, nothing compiled."""
    node = OmegaConf.to_container(config.model, resolve=True)
    with warnings.catch_warnings(), random_pretrained_weights(), torch.device("meta"):
        warnings.simplefilter("ignore")  # the real build warns the same things once more
        model = instantiate_from_config({"target": node["target"], "params": node["params"]}, ckpt_path=None,
                                        compile_unet=False, compile_first_stage_encoder=False)
    return model


def embedder_widths(model: DiffusionEngine, frames: int, resolution: int) -> list[EmbedderWidth]:
    """Run the stage's batch preparation and every embedder on one fake clip; their output widths.

    Args:
        model: a model on the meta device (:func:`_shape_only_model`).
        frames: T, frames per clip.
        resolution: frame height = width in pixels.
    """
    batch = {"video": torch.zeros(1, 3, frames, resolution, resolution, device="meta"),
             "elevation": torch.zeros(1, device="meta")}
    prepared = model.add_custom_cond(batch, infer=True)
    widths = []
    for index, embedder in enumerate(model.conditioner.embedders):
        if embedder.input_key not in prepared:
            raise ConfigError(f"{EMBEDDERS}[{index}].input_key is {embedder.input_key!r}, a key the stage's batch "
                              f"does not have (it has {sorted(prepared)})")
        with torch.no_grad():
            output = embedder(prepared[embedder.input_key])
        slot = route(output)
        widths.append(EmbedderWidth(index, type(embedder).__name__, embedder.input_key, slot,
                                    int(output.shape[CONCAT_DIM[slot]])))
    return widths


def _mismatch(key: str, value, made: str, parts: list[EmbedderWidth]) -> ConfigError:
    listed = " + ".join(p.describe() for p in parts) or "no embedder"
    return ConfigError(f"{key} is {value}, but the embedders of {EMBEDDERS} make {made} ({listed}): "
                       f"change one to match the other")


def _check_widths(config: DictConfig, widths: list[EmbedderWidth]) -> None:
    network = config.model.params.network_config.params
    by_slot = {slot: [w for w in widths if w.slot == slot] for slot in ("vector", "crossattn", "concat")}
    vector = sum(w.width for w in by_slot["vector"])
    adm = network.get("adm_in_channels")
    if (adm or 0) != vector:
        raise _mismatch(f"{NETWORK}.adm_in_channels", adm, f"a vector of {vector}", by_slot["vector"])
    context = {w.width for w in by_slot["crossattn"]}
    if by_slot["crossattn"] and context != {network.get("context_dim")}:
        raise _mismatch(f"{NETWORK}.context_dim", network.get("context_dim"),
                        f"cross-attention tokens of width {' and '.join(map(str, sorted(context)))}",
                        by_slot["crossattn"])
    latent = int(config.model.params.first_stage_config.params.embed_dim)
    concat = sum(w.width for w in by_slot["concat"])
    if network.get("in_channels") != latent + concat:
        raise _mismatch(f"{NETWORK}.in_channels", network.get("in_channels"),
                        f"{concat} concat channels, {latent + concat} with the noisy latent's {latent} "
                        f"({PARAMS}.first_stage_config.params.embed_dim)", by_slot["concat"])


def _check_frame_counts(config: DictConfig) -> None:
    params = config.model.params
    frames = params.get("num_samples")
    counted = {
        f"{PARAMS}.sampler_config.params.guider_config.params.num_frames":
            OmegaConf.select(params, "sampler_config.params.guider_config.params.num_frames"),
        f"{PARAMS}.loss_fn_config.params.num_frames": OmegaConf.select(params, "loss_fn_config.params.num_frames"),
    }
    for key, value in counted.items():
        if value is not None and frames is not None and value != frames:
            raise ConfigError(f"{key} is {value}, but {PARAMS}.num_samples is {frames}: the frames per clip must "
                              f"be the same everywhere")


def _check_unconditional(model: DiffusionEngine) -> None:
    read = {embedder.input_key for embedder in model.conditioner.embedders}
    unread = sorted(set(model.unconditional_keys or ()) - read)
    if unread:
        raise ConfigError(f"the unconditional half zeroes {unread}, which no embedder of {EMBEDDERS} reads "
                          f"(they read {sorted(read)})")


_checked: set[str] = set()


def check_conditioning(config: DictConfig) -> None:
    """Raise :class:`ConfigError` naming the YAML keys where the conditioning and the UNet disagree.

    Configs whose model is not a :class:`DiffusionEngine` with a stage's batch preparation
    (``add_custom_cond``) are not checked. A config passes once per process (later calls with
    the same model node return at once).
    """
    cls = _engine_class(config)
    if cls is None or not hasattr(cls, "add_custom_cond"):
        return
    fingerprint = OmegaConf.to_yaml(config.model, resolve=True)
    if fingerprint in _checked:
        return
    _check_frame_counts(config)
    model = _shape_only_model(config)
    _check_unconditional(model)
    _check_widths(config, embedder_widths(model, model.num_samples, model.resolution))
    _checked.add(fingerprint)
