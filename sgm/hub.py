"""Checkpoints from the Hugging Face hub: ``hf://`` references, downloads into the hub's cache, and
where each released file comes from.

A hub reference names a file in a hub repository::

    hf://OWNER/NAME/PATH/IN/REPO            e.g. hf://hbyang/Hi3D/second_stage.pt
    hf://OWNER/NAME@REVISION/PATH/IN/REPO   a branch, tag or commit

Anything that takes a checkpoint path takes one (``Hi3DPipeline.from_pretrained``, the command
lines' ``--ckpt_dir`` / ``--denoise_checkpoint``, a config's ``checkpoint`` and ``model.params.ckpt_path``).
It is downloaded through ``huggingface_hub`` into its cache (``$HF_HUB_CACHE``, by default
``~/.cache/huggingface/hub``), with a progress bar, once; later uses read the cached copy.
``HF_HUB_OFFLINE=1`` uses the cache only. A file that cannot be had from the hub stops with a
:class:`HubFileError` that names where to get it and where to put it (:data:`KNOWN_FILES`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PREFIX = "hf://"
HUB_README = "ckpts/README.md"
GOOGLE_DRIVE = "https://drive.google.com/file/d/{}/view"


class HubFileError(FileNotFoundError):
    """A hub reference that cannot be resolved to a local file; the message says what to do instead."""


@dataclass(frozen=True)
class KnownFile:
    """Where one released file comes from and where the configs expect it.

    Attributes:
        hub: its ``hf://`` reference, or None when it is not on the hub.
        link: a download page for files that are not on the hub (Google Drive), else None.
        place: path, relative to the repository root, where the configs read it.
        note: what else to know (an archive to unzip, a licence to accept).
    """

    hub: str | None
    link: str | None
    place: str
    note: str = ""

    def advice(self, place: str | os.PathLike | None = None) -> str:
        """One sentence: where to get the file and where to put it (``place``, else :attr:`place`)."""
        source = self.hub if self.hub is not None else self.link
        text = f"get it from {source} and place it at {place or self.place}"
        return f"{text} ({self.note})" if self.note else text


_CKPTS_ZIP = GOOGLE_DRIVE.format("1j_NEG2CPhFeRetYziWK6Qe62R5h7lG_V")
_ZIP_NOTE = "it is inside ckpts.zip of the official release: unzip it in the repository root"
# Keyed by file name (the last part of a path or reference). See ckpts/README.md for sizes and uses.
KNOWN_FILES: dict[str, KnownFile] = {
    "first_stage.pt": KnownFile(None, GOOGLE_DRIVE.format("1z506Fdst31rCOSq5c3COydN-j4KxRdif"),
                                "ckpts/first_stage.pt", "the stage-1 checkpoint is not on the hub"),
    "second_stage.pt": KnownFile("hf://hbyang/Hi3D/second_stage.pt", None, "ckpts/second_stage.pt"),
    "datas.zip": KnownFile("hf://hbyang/Hi3D/datas.zip", None, "datas.zip", "example training data: unzip it"),
    "svd_xt_image_decoder.safetensors": KnownFile(
        "hf://stabilityai/stable-video-diffusion-img2vid-xt/svd_xt_image_decoder.safetensors", None,
        "ckpts/svd_xt_image_decoder.safetensors",
        "a gated repository: accept its licence on the hub, then log in with `hf auth login` or set HF_TOKEN"),
    "open_clip_pytorch_model.bin": KnownFile(
        "hf://laion/CLIP-ViT-H-14-laion2B-s32B-b79K/open_clip_pytorch_model.bin", _CKPTS_ZIP,
        "ckpts/open_clip_pytorch_model.bin", "also inside ckpts.zip of the official release"),
    "ViT-L-14.pt": KnownFile(None, _CKPTS_ZIP, "ckpts/ViT-L-14.pt", _ZIP_NOTE),
    "dpt_hybrid_384.pt": KnownFile(None, _CKPTS_ZIP, "ckpts/dpt_hybrid_384.pt", _ZIP_NOTE),
    "sac+logos+ava1-l14-linearMSE.pth": KnownFile(None, _CKPTS_ZIP,
                                                  "ckpts/metric_models/sac+logos+ava1-l14-linearMSE.pth", _ZIP_NOTE),
}


@dataclass(frozen=True)
class HubReference:
    """A file in a hub repository: ``repo_id`` ("owner/name"), ``filename`` (path in the repo), ``revision``."""

    repo_id: str
    filename: str
    revision: str | None = None

    def __str__(self) -> str:
        revision = f"@{self.revision}" if self.revision else ""
        return f"{PREFIX}{self.repo_id}{revision}/{self.filename}"

    @classmethod
    def parse(cls, reference: str, filename: str | None = None) -> "HubReference":
        """Parse ``hf://OWNER/NAME[@REVISION]/PATH``; ``filename`` is appended to PATH (or is the whole
        PATH when the reference names only the repository).

        Raises:
            ValueError: the reference has no owner, name or file.
        """
        if not is_hub_reference(reference):
            raise ValueError(f"not a hub reference (expected {PREFIX}OWNER/NAME/FILE): {reference!r}")
        parts = [part for part in reference[len(PREFIX):].split("/") if part]
        if filename is not None:
            parts += [part for part in str(filename).split("/") if part]
        if len(parts) < 3:
            raise ValueError(f"hub reference {reference!r} names no file: expected {PREFIX}OWNER/NAME/FILE "
                             f"(e.g. {KNOWN_FILES['second_stage.pt'].hub})")
        name, _, revision = parts[1].partition("@")
        return cls(f"{parts[0]}/{name}", "/".join(parts[2:]), revision or None)


def is_hub_reference(value) -> bool:
    """Whether ``value`` (a string or path) is an ``hf://`` reference."""
    return isinstance(value, str) and value.startswith(PREFIX)


def offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks for the cache only (read at each call)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _what_to_do(reference: HubReference) -> str:
    known = KNOWN_FILES.get(Path(reference.filename).name)
    where = f"; {known.advice()}" if known is not None else ""
    return (f"{where}. A local path works wherever a hub reference does (see {HUB_README})")


def download(reference: str | HubReference) -> Path:
    """The local path of a hub file, downloaded into the hub cache unless it is there already.

    With ``HF_HUB_OFFLINE=1`` only the cache is read.

    Raises:
        HubFileError: ``huggingface_hub`` is not installed, the repository or file does not exist,
            it is gated, the hub cannot be reached, or offline mode finds no cached copy; the message
            names the file, the reason, and where to get it and put it by hand.
        ValueError: a malformed reference.
    """
    if not isinstance(reference, HubReference):
        reference = HubReference.parse(reference)
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            GatedRepoError,
            HfHubHTTPError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise HubFileError(f"{reference} is a hub reference, and huggingface_hub is not installed "
                           f"(pip install -e .[hub]){_what_to_do(reference)}") from None
    cache_only = offline()
    try:
        return Path(hf_hub_download(reference.repo_id, reference.filename, revision=reference.revision,
                                    local_files_only=cache_only))
    except GatedRepoError:
        reason = "its repository is gated: accept its licence on the hub and log in (`hf auth login` or HF_TOKEN)"
    except RepositoryNotFoundError:
        reason = "no such repository on the hub (or it is private: log in with `hf auth login`)"
    except RevisionNotFoundError:
        reason = f"the repository has no revision {reference.revision!r}"
    except EntryNotFoundError:  # also raised for a file missing from the cache when offline or unreachable
        reason = ("it is not in the local hub cache and HF_HUB_OFFLINE=1 forbids downloading" if cache_only else
                  "it is not in that repository, or the hub cannot be reached and the cache has no copy")
    except (HfHubHTTPError, OSError) as err:
        reason = f"the download failed ({type(err).__name__}: {err})"
    raise HubFileError(f"cannot get {reference}: {reason}{_what_to_do(reference)}")


def local_path(path_or_reference: str | os.PathLike) -> Path:
    """A local path as given, or the cached file of an ``hf://`` reference (see :func:`download`)."""
    if is_hub_reference(path_or_reference):
        return download(path_or_reference)
    return Path(path_or_reference)


def join(folder: str | os.PathLike, filename: str) -> str | Path:
    """``filename`` inside a local folder (a ``Path``) or inside a hub repository (an ``hf://`` string)."""
    if is_hub_reference(folder):
        return str(HubReference.parse(str(folder), filename))
    return Path(folder) / filename
