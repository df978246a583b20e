"""Command-line shells: the entry points' flags generated from the config dataclasses, the
`landmark` command (`landmark app`), and logging set-up. The library never parses sys.argv.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from landmark.config import ENTRY_POINTS, add_arguments, from_args


def parse_entry_point(name: str, argv: list[str] | None) -> tuple:
    """Parse `argv` into the config instances of entry point `name` (see `ENTRY_POINTS`)."""
    classes = ENTRY_POINTS[name]
    parser = argparse.ArgumentParser(prog=name, description=f"landmark entry point {name!r}")
    for cls in classes:
        add_arguments(parser, cls)
    namespace = parser.parse_args(argv)
    return tuple(from_args(cls, namespace) for cls in classes)


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )


def main(argv: list[str] | None = None) -> None:
    """The `landmark` command."""
    parser = argparse.ArgumentParser(prog="landmark", description="landmark recognition tools")
    commands = parser.add_subparsers(dest="command", required=True)
    app = commands.add_parser("app", help="the web app: drop in photos, see the landmark")
    app.add_argument(
        "--model",
        default="models:/landmark-classifier@champion",
        help="MLflow model URI or exported TorchScript file (default: the registry's champion)",
    )
    app.add_argument("--endpoint", default="", help="URL of a running /invocations endpoint")
    app.add_argument(
        "--examples",
        default="",
        help="data set folder whose test/ photos become examples "
        "(default: the champion's training data, if it is a local folder)",
    )
    app.add_argument("--host", default="127.0.0.1")
    app.add_argument("--port", type=int, default=7860)
    tag = commands.add_parser("tag", help="tag photo folders: XMP sidecars, report, folders")
    tag.add_argument("paths", nargs="+", type=Path, help="photo files or folders (recursive)")
    tag.add_argument(
        "--model",
        default="models:/landmark-classifier@champion",
        help="MLflow model URI, or a TorchScript file (local engine)",
    )
    tag.add_argument("--report", type=Path, default=Path("landmark-report.jsonl"))
    tag.add_argument("--organize", type=Path, help="add per-landmark folders of links here")
    tag.add_argument("--copy", action="store_true", help="--organize with copies, not links")
    tag.add_argument("--gps-copies", type=Path, help="write JPEG copies with GPS EXIF here")
    tag.add_argument("--overwrite-gps", action="store_true", help="tag photos with GPS too")
    tag.add_argument("--threshold", type=float, help="default: the model's own")
    tag.add_argument("--engine", choices=["local", "spark"], default="local")
    tag.add_argument("--spark-master", default="local[2]")
    args = parser.parse_args(argv)
    setup_logging()
    if args.command == "tag":
        from landmark import tagging

        cfg = tagging.TagConfig(
            report=args.report,
            organize=args.organize,
            copy=args.copy,
            gps_copies=args.gps_copies,
            overwrite_gps=args.overwrite_gps,
        )
        tagging.tag(args.paths, cfg, args.model, args.engine, args.threshold, args.spark_master)
    if args.command == "app":
        from landmark import app as web_app

        web_app.run(args.model, args.endpoint, args.examples, args.host, args.port)
