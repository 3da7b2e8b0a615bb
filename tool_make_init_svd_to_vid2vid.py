"""Make stage 2's initial weights from SVD-XT (official script name).

    python tool_make_init_svd_to_vid2vid.py --input ckpts/svd_xt_image_decoder.safetensors \\
        --output ckpts/svd_xt_image_decoder_vid2vid.safetensors [--config configs/train-v02.yaml]

Builds the stage-2 model of ``--config`` without its ``ckpt_path`` (the file this tool writes),
fills it from SVD (widening the vector MLP input and the first convolution, see
:mod:`sgm.conversion`), loads the result strictly and saves it as safetensors in the model's
dtype. Keys SVD lacks (the MiDaS depth embedder) keep the values the model was built with, so
build it with its pretrained encoders (the default) for a real conversion;
``--random_pretrained_encoders`` is for tests. Every other weight must come from the input: a
file that is not SVD-XT, or lacks part of it, is refused with the missing keys named, and
nothing is written. Refuses to overwrite ``--output``; the file appears whole or not at all.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from safetensors.torch import save_file

from sgm.checkpoint import load_into, read_state_dict
from sgm.cli import run_main
from sgm.common.errors import OutputExistsError
from sgm.config import build_model, load_config
from sgm.conversion import ConversionError, ConversionReport, convert_svd_state_dict
from sgm.modules.encoders.depth import DepthEmbedder

COND_AUG_KEY = "cond_aug"
NOT_IN_SVD = (DepthEmbedder,)  # conditioner embedders of stage 2 whose weights SVD-XT does not have


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, type=Path, help="SVD-XT weights (.safetensors or another layout)")
    parser.add_argument("--output", required=True, type=Path, help="converted weights (.safetensors), must not exist")
    parser.add_argument("--config", default="configs/train-v02.yaml", type=Path, help="stage-2 model config")
    parser.add_argument("--random_pretrained_encoders", action="store_true",
                        help="build OpenCLIP/MiDaS with random weights instead of reading their files (tests)")
    return parser.parse_args(argv)


def cond_aug_width(model) -> int:
    """Width of the cond_aug embedding: the SVD columns kept at the end of the vector."""
    for embedder in model.conditioner.embedders:
        if embedder.input_key == COND_AUG_KEY and hasattr(embedder, "outdim"):
            return int(embedder.outdim)
    raise ConversionError(f"the model has no '{COND_AUG_KEY}' vector embedder with an 'outdim'")


def not_in_svd_prefixes(model) -> list[str]:
    """State-dict key prefixes of the model's embedders that SVD has no weights for (MiDaS)."""
    return [f"conditioner.embedders.{index}." for index, embedder in enumerate(model.conditioner.embedders)
            if isinstance(embedder, NOT_IN_SVD)]


def save_new_file(tensors: dict, output_path: Path) -> None:
    """Write ``tensors`` to ``output_path``, which must not exist: written beside it under a temporary
    name, then linked into place (which fails if the name was taken meanwhile; on a file system
    without hard links, renamed after a last check), so an interrupted or failed run leaves no
    partial file and never replaces one.

    Raises:
        OutputExistsError: ``output_path`` appeared while converting (it is left as it is).
        ConversionError: the folder or the file cannot be written (the operating system's reason).
    """
    try:
        output_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a file in the way, no permission
        raise ConversionError(f"cannot create the folder of {output_path} ({err.strerror or err}); nothing was "
                              "written") from err
    temporary = None
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{output_path.name}.", suffix=".partial",
                                             dir=output_path.parent)
        os.close(handle)
        save_file(tensors, temporary)
        try:
            os.link(temporary, output_path)
        except FileExistsError:
            raise
        except OSError:  # no hard links here
            if output_path.exists():
                raise FileExistsError(output_path) from None
            os.replace(temporary, output_path)
    except FileExistsError as err:
        raise OutputExistsError(f"{output_path} appeared while converting; it was left as it is") from err
    except OSError as err:
        raise ConversionError(f"cannot write {output_path} ({err.strerror or err}); nothing was written") from err
    finally:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)


def convert(input_path: Path, output_path: Path, config_path: Path,
            random_pretrained_encoders: bool) -> ConversionReport:
    """Write the converted weights; returns the report.

    Raises:
        CheckpointError: the input is unreadable (a :class:`ConversionError` when it lacks SVD
            weights the model needs or does not fit); the message names the file and the keys, and
            nothing is written.
        OutputExistsError: ``output_path`` exists.
    """
    if output_path.suffix != ".safetensors":
        raise ConversionError(f"--output must end with .safetensors, got {output_path}")
    if output_path.exists():
        raise OutputExistsError(f"{output_path} exists; remove it first (the tool never overwrites)")
    svd = read_state_dict(input_path)  # a damaged or foreign file: CheckpointError naming it
    config = load_config(config_path, ["model.params.ckpt_path=null"])
    model = build_model(config, random_pretrained_encoders=random_pretrained_encoders or None)
    noisy_channels = int(config.model.params.network_config.params.out_channels)
    try:
        state, report = convert_svd_state_dict(svd, model.state_dict(), cond_aug_width(model), noisy_channels,
                                               not_in_svd_prefixes(model))
    except ConversionError as err:
        raise ConversionError(f"cannot convert {input_path}: {err}. Nothing was written") from err
    load_into(model, state, source=str(input_path))
    save_new_file({key: value.contiguous() for key, value in model.state_dict().items()}, output_path)
    return report


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = convert(args.input, args.output, args.config, args.random_pretrained_encoders)
    print(report.describe())
    print(f"wrote {args.output}")


if __name__ == "__main__":
    run_main(main)
