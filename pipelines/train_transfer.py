"""`train_transfer` entry point: fine-tune a pretrained CNN; evaluate, export, log the model."""

import sys

from landmark import cli, steps


def main(argv: list[str] | None = None) -> None:
    cli.run_entry_point("train_transfer", steps.train_transfer, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
