"""`main` entry point: the whole workflow, one nested MLflow run per step."""

import sys

from landmark import cli, steps


def main(argv: list[str] | None = None) -> None:
    cli.run_entry_point("main", steps.main, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
