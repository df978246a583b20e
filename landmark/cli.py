"""Shared shell of the entry points: flags generated from the config dataclasses, and logging.

Only `pipelines/` (and later the `landmark` command) call these, with an explicit argv.
"""

from __future__ import annotations

import argparse
import logging

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
