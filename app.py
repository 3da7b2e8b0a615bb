"""Hi3D web app: upload an image, get the orbit views, the refined views and a 3D model.

    pip install -e .[app]
    python app.py                      # http://127.0.0.1:7860, demo models unless ckpts/ holds the checkpoints
    python app.py --low_memory         # a GPU with less memory (same results)

It listens on 127.0.0.1 only, unless --host or --share says otherwise. Results go to
OUTPUT_ROOT/<job id>/ (default outputs/app/), a folder that must hold nothing but job folders;
old ones are deleted (--keep_jobs, --keep_hours). A bad option stops it with one line, exit code 2.
"""
from __future__ import annotations

import argparse
import sys


def parse_args(argv=None) -> argparse.Namespace:
    from sgm.cli import add_execution_args
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--share", action="store_true", help="also publish a public gradio.live link (needs internet)")
    parser.add_argument("--ckpt_dir", default=None,
                        help="folder of first_stage.pt / second_stage.pt, or a hub repository hf://OWNER/NAME (default ckpts; "
                             "the demo models when it holds neither)")
    parser.add_argument("--demo", action="store_true", help="serve the tiny untrained demo models even if checkpoints exist")
    parser.add_argument("--stage1_config", default=None, help="stage-1 config (overrides the checkpoint folder)")
    parser.add_argument("--stage2_config", default=None, help="stage-2 config (overrides the checkpoint folder)")
    add_execution_args(parser)
    parser.add_argument("--max_upload_mb", type=float, default=20.0, help="largest accepted upload in MB (default 20)")
    parser.add_argument("--output_root", default="outputs/app",
                        help="folder holding one subfolder per job and nothing else, under the folder the app runs "
                             "in or the temp folder (default outputs/app)")
    parser.add_argument("--keep_jobs", type=int, default=50,
                        help="keep the folders of the last N jobs used, delete older ones (default 50; 0: no limit)")
    parser.add_argument("--keep_hours", type=float, default=24.0,
                        help="delete job folders, uploads and gradio's copies unused for T hours (default 24; 0: no)")
    parser.add_argument("--mesh_iterations", type=int, default=None,
                        help="Gaussian-fit steps of the 3D stage (default 3000 on a GPU, 100 on a CPU)")
    parser.add_argument("--mesh_resolution", type=int, default=None,
                        help="view size used by the 3D stage (default 512 on a GPU, 64 on a CPU)")
    return parser.parse_args(argv)


def start(args: argparse.Namespace) -> None:
    """Check the options and the output root, then build the runner and serve the page until interrupted.

    Raises:
        UsageError: a bad option or output root (see :func:`sgm.app.storage.check_output_root`).
    """
    from sgm.app.storage import Retention, check_output_root, remove_expired_jobs
    from sgm.common.errors import UsageError

    if not args.max_upload_mb > 0:
        raise UsageError(f"--max_upload_mb must be more than 0, got {args.max_upload_mb}")
    retention = Retention(args.keep_jobs, args.keep_hours)
    output_root = check_output_root(args.output_root)
    remove_expired_jobs(output_root, retention)

    from sgm.app.jobs import JobRunner
    from sgm.app.models import choose_models, mesh_settings
    from sgm.app.ui import Handlers, serve
    from sgm.cli import pipeline_options
    from sgm.common.devices import resolve_device

    choice = choose_models(args.ckpt_dir or "ckpts", demo=args.demo, stage1_config=args.stage1_config,
                           stage2_config=args.stage2_config, ckpt_dir_given=args.ckpt_dir is not None,
                           **pipeline_options(args))
    mesh_config = mesh_settings(resolve_device(args.device).type == "cuda", args.mesh_iterations,
                                args.mesh_resolution)
    runner = JobRunner(choice.factory, output_root, mesh_config, retention)
    max_bytes = int(args.max_upload_mb * 2**20)
    if args.host not in ("127.0.0.1", "localhost", "::1") or args.share:
        print("WARNING: the app is reachable from other machines; anyone who can reach it can run jobs",
              file=sys.stderr)
    print(f"models: {choice.mode} ({choice.notice})")
    serve(Handlers(runner, max_bytes), choice.notice, host=args.host, port=args.port, share=args.share,
          max_upload_bytes=max_bytes, keep_hours=retention.keep_hours)


def main(argv=None) -> None:
    args = parse_args(argv)
    from sgm.cli import run_main
    run_main(lambda: start(args))


if __name__ == "__main__":
    main()
