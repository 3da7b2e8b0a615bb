"""The latent video diffusion engine: UNet + denoiser + conditioner + VAE + loss + sampler.

Frames are flattened clip-major: a batch ``video`` of shape (B, 3, T, H, W) becomes
(B*T, 3, H, W) images and (B*T, 4, H/8, W/8) latents.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence

import pytorch_lightning as pl
import torch
import torch.nn as nn
from pytorch_lightning.strategies import DeepSpeedStrategy, SingleDeviceStrategy
from torch.optim.lr_scheduler import LambdaLR
from torch.profiler import record_function

from ..checkpoint import load_checkpoint
from ..modules.diffusionmodules.guiders import in_two_halves
from ..modules.diffusionmodules.util import compile_block_bodies
from ..modules.diffusionmodules.wrappers import OpenAIWrapper
from ..modules.distributions.distributions import DiagonalGaussianDistribution
from ..util import ConfigError, instantiate_from_config
from .cuda_graph import GraphedLoss

DEFAULT_OPTIMIZER = {"target": "torch.optim.AdamW"}
# Lightning precision -> the autocast dtype it trains under.
AUTOCAST_DTYPES = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}
# The config key of CUDA-graphed training, named in its errors.
CUDA_GRAPH_KEY = "model.params.cuda_graph_training"
# torch.profiler labels of the parts of a training step's forward (DiffusionEngine.shared_step).
SHARED_STEP_PHASES = ("add_custom_cond", "encode_first_stage", "conditioner", "unet_loss")


def select_parameters(
    named: Iterable[tuple[str, nn.Parameter]], keys: Sequence[str]
) -> list[tuple[str, nn.Parameter]]:
    """Parameters whose name contains any of ``keys``; ``"all"`` selects everything."""
    named = list(named)
    if "all" in keys:
        return named
    return [(name, p) for name, p in named if any(key in name for key in keys)]


def frozen_scalars_to_buffers(module: nn.Module) -> list[str]:
    """Turn every frozen 0-dim parameter of ``module`` into a persistent buffer of the same name
    (the state dict keeps its keys, shapes and values). Returns the qualified names."""
    moved = []
    for owner_name, owner in module.named_modules():
        for name, param in list(owner.named_parameters(recurse=False)):
            if param.dim() == 0 and not param.requires_grad:
                del owner._parameters[name]
                owner.register_buffer(name, param.detach(), persistent=True)
                moved.append(f"{owner_name}.{name}" if owner_name else name)
    return moved


def video_to_frames(video: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> (B*T, C, H, W), clip-major."""
    b, c, t, h, w = video.shape
    return video.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)


def frames_to_video(frames: torch.Tensor, num_frames: int) -> torch.Tensor:
    """(B*T, C, H, W) -> (B, C, T, H, W)."""
    n, c, h, w = frames.shape
    return frames.reshape(n // num_frames, num_frames, c, h, w).permute(0, 2, 1, 3, 4)


def first_clip(batch: dict) -> dict:
    """The batch cut to its first clip: tensors with a batch dim and lists keep row 0 only."""
    def cut(value):
        batched = isinstance(value, list) or (isinstance(value, torch.Tensor) and value.ndim > 0)
        return value[:1] if batched else value
    return {key: cut(value) for key, value in batch.items()}


class DiffusionEngine(pl.LightningModule):
    """Latent diffusion over videos, trainable with Lightning and usable for sampling.

    Args:
        network_config: the UNet (``VideoUNet``); held as ``model.diffusion_model``.
        denoiser_config: preconditioning wrapper (``Denoiser``).
        first_stage_config: the frozen autoencoder (``AutoencoderKL``).
        conditioner_config: ``GeneralConditioner``.
        sampler_config: sampler used by :meth:`sample` (optional for training-only use).
        loss_fn_config: training loss (optional for inference-only use).
        optimizer_config: optimizer node without ``params`` learning rate (default AdamW).
        scheduler_config: node of an object whose ``schedule(step)`` multiplies the learning rate at
            each optimizer step (e.g. :class:`sgm.lr_scheduler.LambdaLinearScheduler`); None: constant.
        input_key: batch key of the target clip (B, 3, T, H, W) in [-1, 1].
        scale_factor: latent multiplier (SD VAE: 0.18215).
        disable_first_stage_autocast: run the VAE outside autocast, in its own dtype.
        en_and_decode_n_samples_a_time: VAE chunk size in frames (default: all at once).
        encode_n_samples_a_time: frames per encoder call (default: ``en_and_decode_n_samples_a_time``).
            The encoder sees each frame on its own and the posterior is sampled once for all
            chunks, so any value gives the same latents; small values cut the memory of
            float32 encoding (16 frames at 512 px need about 14 GiB at once).
        compile_unet: ``torch.compile`` the body of every checkpointable UNet block for training
            (:func:`~sgm.modules.diffusionmodules.util.compile_block_bodies`: activation
            checkpointing stays eager, so memory is the eager model's; the first step compiles for
            minutes). Inference pipelines compile the whole UNet instead.
        compile_first_stage_encoder: ``torch.compile`` the frozen VAE encoder that encodes the
            training clips (its norms and activations fused: half the time in bf16; the first
            step compiles for about 20 s).
        cuda_graph_training: replay the training loss's forward and backward from CUDA graphs
            (:class:`~sgm.models.cuda_graph.GraphedLoss`), captured at the first step: the step
            is no longer bound by Python's kernel launches. Needs one CUDA device
            (single-device strategy), ``accumulate_grad_batches: 1`` and batches of one shape;
            the graphs keep their memory between steps.
        half_precision_frozen_modules: in mixed-precision training (Lightning ``16-mixed`` or
            ``bf16-mixed``) hold the frozen autoencoder and embedders in the autocast dtype, as the
            official DeepSpeed fp16 run held its whole model: the VAE then encodes in half
            precision and the embedders' weights are not cast at every call. False keeps them in
            float32 (the VAE encodes in float32 with ``disable_first_stage_autocast``).
        num_samples: T, frames per clip.
        trained_param_keys: UNet parameter-name substrings to train (``["all"]`` for all);
            the rest of the UNet is frozen.
        ckpt_path: checkpoint loaded at construction (any layout of :mod:`sgm.checkpoint`).
        ckpt_allow_missing: key prefixes ``ckpt_path`` may lack (kept as built).
        log_keys: batch keys shown by image logging.
    """

    def __init__(
        self,
        network_config: dict,
        denoiser_config: dict,
        first_stage_config: dict,
        conditioner_config: dict,
        sampler_config: dict | None = None,
        loss_fn_config: dict | None = None,
        optimizer_config: dict | None = None,
        scheduler_config: dict | None = None,
        input_key: str = "video",
        scale_factor: float = 1.0,
        disable_first_stage_autocast: bool = False,
        en_and_decode_n_samples_a_time: int | None = None,
        encode_n_samples_a_time: int | None = None,
        compile_unet: bool = False,
        compile_first_stage_encoder: bool = False,
        cuda_graph_training: bool = False,
        half_precision_frozen_modules: bool = False,
        num_samples: int = 16,
        trained_param_keys: Sequence[str] = ("all",),
        ckpt_path: str | None = None,
        ckpt_allow_missing: Sequence[str] = (),
        log_keys: str | Sequence[str] | None = None,
    ):
        super().__init__()
        self.model = OpenAIWrapper(instantiate_from_config(network_config))
        self.denoiser = instantiate_from_config(denoiser_config)
        self.sampler = instantiate_from_config(sampler_config) if sampler_config is not None else None
        self.conditioner = instantiate_from_config(conditioner_config)
        self.first_stage_model = instantiate_from_config(first_stage_config).eval().requires_grad_(False)
        self.loss_fn = instantiate_from_config(loss_fn_config) if loss_fn_config is not None else None
        self.optimizer_config = optimizer_config or DEFAULT_OPTIMIZER
        self.scheduler_config = scheduler_config
        self.input_key = input_key
        self.scale_factor = scale_factor
        self.disable_first_stage_autocast = disable_first_stage_autocast
        self.chunk_size = en_and_decode_n_samples_a_time
        self.encode_chunk_size = encode_n_samples_a_time or en_and_decode_n_samples_a_time
        self.num_samples = num_samples
        self.half_precision_frozen_modules = half_precision_frozen_modules
        self.trained_param_keys = list(trained_param_keys)
        self.log_keys = [log_keys] if isinstance(log_keys, str) else list(log_keys or ())
        self.learning_rate = 1.0e-5  # set by the trainer from base_learning_rate and the batch layout
        self._freeze_untrained_unet_parameters()
        if ckpt_path is not None:
            load_checkpoint(self, ckpt_path, allow_missing=ckpt_allow_missing)
        if compile_unet:
            compile_block_bodies(self.model.diffusion_model)
        if compile_first_stage_encoder:
            self.first_stage_model.encoder.compile()
        self.cuda_graph_training = cuda_graph_training
        self._graphed_loss: GraphedLoss | None = None

    @property
    def unconditional_keys(self) -> list[str]:
        """Batch keys whose embedders are zeroed for the unconditional half of guidance
        (here: those of embedders with ``ucg_rate > 0``; a stage may declare its own)."""
        return sorted({embedder.input_key for embedder in self.conditioner.embedders if embedder.ucg_rate > 0})

    # ------------------------------------------------------------------ parameters
    def _freeze_untrained_unet_parameters(self) -> None:
        chosen = {id(p) for _, p in select_parameters(self.model.named_parameters(), self.trained_param_keys)}
        for p in self.model.parameters():
            p.requires_grad_(id(p) in chosen)

    def trained_parameters(self) -> list[nn.Parameter]:
        """UNet parameters selected by ``trained_param_keys`` plus trainable embedders'."""
        params = [p for _, p in select_parameters(self.model.named_parameters(), self.trained_param_keys)]
        for embedder in self.conditioner.embedders:
            if embedder.is_trainable:
                params.extend(p for p in embedder.parameters() if p.requires_grad)
        return params

    def frozen_modules(self) -> list[nn.Module]:
        """The autoencoder and the embedders that are not trained."""
        return [self.first_stage_model, *(e for e in self.conditioner.embedders if not e.is_trainable)]

    def apply_training_precision(self, autocast_dtype: torch.dtype | None) -> None:
        """Cast the frozen modules to ``autocast_dtype`` if ``half_precision_frozen_modules``.

        Called when training starts with the trainer's autocast dtype (None: full precision,
        nothing is cast).
        """
        if self.half_precision_frozen_modules and autocast_dtype is not None:
            for module in self.frozen_modules():
                module.to(autocast_dtype)

    def setup(self, stage: str) -> None:
        # Runs before the strategy wraps the model. DeepSpeed (0.19) broadcasts every parameter
        # from rank 0 as bytes, which fails on 0-dim ones; the only ones are frozen (CLIP's
        # logit_scale), so they become buffers of the same name, shape and value there.
        if isinstance(self.trainer.strategy, DeepSpeedStrategy):
            frozen_scalars_to_buffers(self)

    def on_fit_start(self) -> None:
        if self.cuda_graph_training:
            self._check_cuda_graph_training()
        self.apply_training_precision(AUTOCAST_DTYPES.get(str(self.trainer.precision)))

    def on_fit_end(self) -> None:
        # Lightning moves the model off the GPU after fitting, which invalidates a captured step;
        # dropping it also frees the graphs' memory. A later fit captures anew.
        self._graphed_loss = None

    def _check_cuda_graph_training(self) -> None:
        """Raise ``ConfigError`` if the model or the trainer's setup cannot replay a captured step."""
        trainer = self.trainer
        if trainer.world_size != 1 or not isinstance(trainer.strategy, SingleDeviceStrategy):
            raise ConfigError(f"{CUDA_GRAPH_KEY}=true supports one device with the single-device strategy; "
                              f"the trainer uses {type(trainer.strategy).__name__} over {trainer.world_size} "
                              "processes (set lightning.trainer.devices=1 and strategy=auto)")
        if trainer.accumulate_grad_batches != 1:
            raise ConfigError(f"{CUDA_GRAPH_KEY}=true reuses its gradient buffers at every backward; "
                              f"accumulate_grad_batches must be 1, not {trainer.accumulate_grad_batches}")
        if self.device.type != "cuda":
            raise ConfigError(f"{CUDA_GRAPH_KEY}=true needs a CUDA device; the model is on {self.device}")

    def half_weights_autocast(self, device: torch.device):
        """Autocast to the UNet's weight dtype when those weights are float16/bfloat16 and no
        autocast is active on ``device``; otherwise nothing.

        DeepSpeed's half-precision modes (Lightning ``deepspeed_stage_2`` under ``16-mixed`` or
        ``bf16-mixed``) cast the whole module to half precision and run it without autocast,
        as the official DeepSpeed run did. The latents and sigmas stay float32 here
        (:meth:`shared_step`), so the UNet's matrix products need their inputs cast.
        """
        dtype = next(self.model.parameters()).dtype
        if dtype not in (torch.float16, torch.bfloat16) or torch.is_autocast_enabled(device.type):
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=dtype)

    def train(self, mode: bool = True) -> "DiffusionEngine":
        super().train(mode)
        self.first_stage_model.eval()  # the autoencoder is frozen
        return self

    # ------------------------------------------------------------------ autoencoder
    def _vae_context(self, device: torch.device):
        if self.disable_first_stage_autocast:
            return torch.autocast(device_type=device.type, enabled=False)
        return contextlib.nullcontext()

    def _vae_dtype(self) -> torch.dtype:
        return next(self.first_stage_model.parameters()).dtype

    @torch.no_grad()
    def encode_first_stage(self, frames: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Scaled posterior samples (N, 4, H/8, W/8) of frames (N, 3, H, W) in [-1, 1].

        The posterior moments are computed ``encode_n_samples_a_time`` frames at a time, then
        sampled in one draw: the latents do not depend on the chunk size.
        """
        chunk = self.encode_chunk_size or frames.shape[0]
        vae = self.first_stage_model
        with self._vae_context(frames.device):
            moments = torch.cat([vae.posterior(part.to(self._vae_dtype())).parameters for part in frames.split(chunk)])
        return vae.latent_of(DiagonalGaussianDistribution(moments), generator) * self.scale_factor

    @torch.no_grad()
    def decode_first_stage(self, latents: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """Frames (N, 3, H, W), roughly in [-1, 1], from scaled latents (N, 4, h, w).

        ``chunk_size`` frames are decoded at a time (default: the config's, else all).
        """
        chunk = chunk_size or self.chunk_size or latents.shape[0]
        latents = latents / self.scale_factor
        with self._vae_context(latents.device):
            frames = [self.first_stage_model.decode(part.to(self._vae_dtype())) for part in latents.split(chunk)]
        return torch.cat(frames)

    # ------------------------------------------------------------------ conditioning
    def add_custom_cond(self, batch: dict, infer: bool, generator: torch.Generator | None = None) -> dict:
        """Derive the conditioning inputs (e.g. condition frames) from the batch; identity here."""
        return batch

    def denoiser_fn(self, num_frames: int, split_guidance: bool = False, network: nn.Module | None = None):
        """``denoiser(x, sigma, cond)`` over this engine's UNet, for the samplers.

        The UNet gets ``image_only_indicator`` None, i.e. zeros (every frame is a video frame).
        With ``split_guidance`` a guider-batched call ``[uc ; c]`` runs as two half-size calls
        (same result, about half the activation memory). ``network``: another copy of
        ``self.model`` to call (a replica on another device); default ``self.model``.
        """
        network = self.model if network is None else network

        def denoise(x: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
            return self.denoiser(network, x, sigma, cond, num_video_frames=num_frames)
        return in_two_halves(denoise) if split_guidance else denoise

    # ------------------------------------------------------------------ training
    def shared_step(self, batch: dict) -> torch.Tensor:
        """The training loss of a raw batch: :meth:`add_custom_cond`, then :meth:`prepared_loss`."""
        # the labels (SHARED_STEP_PHASES) name the phases in torch.profiler traces
        with record_function("add_custom_cond"):
            batch = self.add_custom_cond(batch, infer=False)
        return self.prepared_loss(batch)

    def prepared_loss(self, batch: dict) -> torch.Tensor:
        """The training loss of a batch that :meth:`add_custom_cond` has prepared: encoding,
        conditioning and the UNet's loss. Its shapes do not depend on the batch's values and it
        makes no host synchronisation: the part that ``cuda_graph_training`` captures."""
        if self.loss_fn is None:
            raise RuntimeError("this model was built without loss_fn_config: it cannot be trained")
        with record_function("encode_first_stage"):
            # float32 latents: the loss math does not depend on the VAE's dtype
            x0 = self.encode_first_stage(video_to_frames(batch[self.input_key])).float()
        with record_function("conditioner"):
            cond = self.conditioner(batch)
        with record_function("unet_loss"), self.half_weights_autocast(x0.device):
            return self.loss_fn(self.model, self.denoiser, cond, x0, batch).mean()

    def training_loss(self, batch: dict) -> torch.Tensor:
        """The loss of a training step: :meth:`shared_step`; with ``cuda_graph_training``,
        :meth:`add_custom_cond` runs eagerly (the stage-2 degradation chooses its blurs, resizes and
        noises on the host for every batch) and :meth:`prepared_loss` is replayed from CUDA graphs
        captured at the first call."""
        if not self.cuda_graph_training:
            return self.shared_step(batch)
        if self._graphed_loss is None:
            self._graphed_loss = GraphedLoss(self, self.prepared_loss)
        with record_function("add_custom_cond"):
            prepared = self.add_custom_cond(batch, infer=False)
        return self._graphed_loss(prepared)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.training_loss(batch)
        self.log("loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=batch[self.input_key].shape[0])
        return loss

    def configure_optimizers(self):
        node = dict(self.optimizer_config)
        params = dict(node.get("params") or {})
        params["lr"] = self.learning_rate
        node["params"] = params
        optimizer = instantiate_from_config(node, params=self.trained_parameters())
        if self.scheduler_config is None:
            return optimizer
        multiplier = instantiate_from_config(self.scheduler_config).schedule
        return [optimizer], [{"scheduler": LambdaLR(optimizer, lr_lambda=multiplier), "interval": "step",
                              "frequency": 1}]

    # ------------------------------------------------------------------ logging
    # Whether log_images conditions its samples as at inference (True) or as in training.
    log_condition_infer = True

    @torch.no_grad()
    def log_images(
        self,
        batch: dict,
        N: int = 8,
        sample: bool = True,
        ucg_keys: Sequence[str] | None = None,
        num_steps: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Frames of the first clip of ``batch`` for visual monitoring, all roughly in [-1, 1].

        Args:
            N: frames shown per image grid (at most T).
            sample: also draw a guided sample (``num_steps`` sampler steps; None = the config's).
            ucg_keys: batch keys whose embedders are zeroed in the unconditional branch
                (default: :attr:`unconditional_keys`).

        Returns:
            ``inputs``, ``reconstructions`` (VAE round trip), ``conditions`` (the condition
            frames, when the engine makes them) and ``samples``: (n, 3, H, W), n = min(N, T);
            ``inputs_video`` and ``samples_video``: (1, 3, T, H, W).
        """
        first = first_clip(batch)
        video = first[self.input_key]
        num_frames = video.shape[2]
        shown = min(N, num_frames)
        frames = video_to_frames(video)
        latents = self.encode_first_stage(frames)
        out = {"inputs": frames[:shown], "inputs_video": video,
               "reconstructions": self.decode_first_stage(latents)[:shown]}
        cond_batch = self.add_custom_cond(first, infer=self.log_condition_infer)
        if "cond_frames" in cond_batch:
            out["conditions"] = cond_batch["cond_frames"][:shown]
        if sample:
            readable = {embedder.input_key for embedder in self.conditioner.embedders}
            if ucg_keys is None:
                ucg_keys = self.unconditional_keys
            unknown = sorted(set(ucg_keys) - readable)
            if unknown:
                raise ValueError(f"ucg_keys {unknown} are read by no embedder (embedders read {sorted(readable)})")
            cond, uncond = self.conditioner.get_unconditional_conditioning(cond_batch, ucg_keys)
            samples = self.decode_first_stage(self.sample(cond, uncond, torch.randn_like(latents), num_frames,
                                                          num_steps=num_steps))
            out["samples"] = samples[:shown]
            out["samples_video"] = frames_to_video(samples, num_frames)
        return out

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(
        self,
        cond: dict,
        uc: dict,
        noise: torch.Tensor,
        num_frames: int,
        num_steps: int | None = None,
        callback=None,
        denoiser=None,
        guider=None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Guided samples (B*T, C, h, w) from unit noise of the same shape.

        ``denoiser``: the ``denoiser(x, sigma, cond)`` to sample with (default
        :meth:`denoiser_fn` of ``num_frames``; an execution plan passes split or multi-device
        ones). ``callback``, ``guider`` and ``generator`` go to the sampler's call (see
        :class:`~sgm.modules.diffusionmodules.sampling.EulerEDMSampler`).
        """
        if self.sampler is None:
            raise RuntimeError("this model was built without sampler_config: it cannot sample")
        denoiser = self.denoiser_fn(num_frames) if denoiser is None else denoiser
        with self.half_weights_autocast(noise.device):
            return self.sampler(denoiser, noise, cond, uc, num_steps=num_steps,
                                generator=generator, callback=callback, guider=guider)
