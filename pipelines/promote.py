"""`promote` entry point: move the registry alias `champion` to the best model version."""

import sys

from landmark import cli, steps


def main(argv: list[str] | None = None) -> None:
    cli.run_entry_point("promote", steps.promote, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
