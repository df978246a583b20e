"""`prepare` entry point: fetch, validate and cache the data set; log its summary and pictures."""

import sys

from landmark import cli, steps


def main(argv: list[str] | None = None) -> None:
    cli.run_entry_point("prepare", steps.prepare, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
