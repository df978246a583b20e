"""`main` entry point: the whole workflow, one nested MLflow run per step."""

import sys

from landmark import cli, steps


def main(argv: list[str] | None = None) -> None:
    cli.setup_logging()
    steps.main(*cli.parse_entry_point("main", argv))


if __name__ == "__main__":
    main(sys.argv[1:])
