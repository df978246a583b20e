"""`train_scratch` entry point: train a CNN from scratch; evaluate, export, log the model."""

import sys

from landmark import cli, steps


def main(argv: list[str] | None = None) -> None:
    cli.run_entry_point("train_scratch", steps.train_scratch, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
