"""`prepare` entry point: fetch, validate and cache the data set; log its summary and pictures."""

import sys

from landmark import cli, steps


def main(argv: list[str] | None = None) -> None:
    cli.setup_logging()
    (data_cfg,) = cli.parse_entry_point("prepare", argv)
    steps.prepare(data_cfg)


if __name__ == "__main__":
    main(sys.argv[1:])
