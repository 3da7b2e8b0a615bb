"""Make stage 2's initial weights from SVD-XT (official script name).

    python tool_make_init_svd_to_vid2vid.py --input ckpts/svd_xt_image_decoder.safetensors \\
        --output ckpts/svd_xt_image_decoder_vid2vid.safetensors [--config configs/train-v02.yaml]

Builds the stage-2 model of ``--config`` without its ``ckpt_path`` (the file this tool writes),
fills it from SVD (widening the vector MLP input and the first convolution, see
:mod:`sgm.conversion`), loads the result strictly and saves it as safetensors in the model's
dtype. Keys SVD lacks (MiDaS) keep the values the model was built with, so build it with its
pretrained encoders (the default) for a real conversion; ``--random_pretrained_encoders`` is
for tests. Refuses to overwrite ``--output``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from safetensors.torch import save_file

from sgm.checkpoint import load_into, read_state_dict
from sgm.cli import run_main
from sgm.config import build_model, load_config
from sgm.conversion import ConversionError, ConversionReport, convert_svd_state_dict
from sgm.pipelines.outputs import OutputExistsError

COND_AUG_KEY = "cond_aug"


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


def convert(input_path: Path, output_path: Path, config_path: Path,
            random_pretrained_encoders: bool) -> ConversionReport:
    """Write the converted weights; returns the report."""
    if output_path.suffix != ".safetensors":
        raise ConversionError(f"--output must end with .safetensors, got {output_path}")
    if output_path.exists():
        raise OutputExistsError(f"{output_path} exists; remove it first (the tool never overwrites)")
    svd = read_state_dict(input_path)
    config = load_config(config_path, ["model.params.ckpt_path=null"])
    model = build_model(config, random_pretrained_encoders=random_pretrained_encoders or None)
    noisy_channels = int(config.model.params.network_config.params.out_channels)
    state, report = convert_svd_state_dict(svd, model.state_dict(), cond_aug_width(model), noisy_channels)
    load_into(model, state, source=str(input_path))
    output_path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(output_path))
    return report


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = convert(args.input, args.output, args.config, args.random_pretrained_encoders)
    print(report.describe())
    print(f"wrote {args.output}")


if __name__ == "__main__":
    run_main(main)
