"""`python -m app` (or `asr-app`): serve the web app, on the loopback interface unless told otherwise."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asr-app", description="Web app: offline Whisper transcription with speculative decoding."
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    parser.add_argument("--max-upload-mb", type=float, default=50.0, help="largest upload in MB (default 50)")
    parser.add_argument(
        "--max-duration", type=float, default=600.0, help="longest audio in seconds (default 600)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=1, help="transcriptions running at once (default 1)"
    )
    parser.add_argument("--max-queue", type=int, default=20, help="requests allowed to wait (default 20)")
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads for torch (default: all cores)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # No telemetry, no update check: the app runs offline.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("asr").setLevel(logging.INFO)  # ours; the HTTP libraries' request lines stay quiet
    for flag, value in (
        ("--max-upload-mb", args.max_upload_mb),
        ("--max-duration", args.max_duration),
        ("--concurrency", args.concurrency),
        ("--max-queue", args.max_queue),
    ):
        if not value > 0:  # also refuses NaN
            parser.error(f"{flag} must be > 0, got {value}")

    from .handlers import AppSettings
    from .ui import build_demo, launch_options

    settings = AppSettings(
        max_upload_mb=args.max_upload_mb,
        max_duration_s=args.max_duration,
        device=args.device,
        concurrency_limit=args.concurrency,
        max_queue=args.max_queue,
    )
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    demo = build_demo(settings)
    demo.launch(server_name=args.host, server_port=args.port, **launch_options(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
