"""Command-line shells: the entry points' flags and the `landmark` command (`landmark app`,
`landmark tag`, `landmark team`), all generated from the config dataclasses; and logging set-up.
The library never parses sys.argv.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from landmark.config import (
    ENTRY_POINTS,
    AppConfig,
    TagConfig,
    TeamConfig,
    UserConfig,
    add_arguments,
    from_args,
)

log = logging.getLogger("landmark")


def parse_entry_point(name: str, argv: list[str] | None) -> tuple:
    """Parse `argv` into the config instances of entry point `name` (see `ENTRY_POINTS`).

    A value a config does not allow ends the program here (exit 2, naming the field and the
    allowed values), before any data is loaded or any run is started.
    """
    classes = ENTRY_POINTS[name]
    parser = argparse.ArgumentParser(prog=name, description=f"landmark entry point {name!r}")
    for cls in classes:
        add_arguments(parser, cls)
    namespace = parser.parse_args(argv)
    return tuple(_build(parser, cls, namespace) for cls in classes)


def run_entry_point(name: str, step, argv: list[str] | None) -> None:
    """Parse `argv` for entry point `name` and run `step` on its configs. A login or permission
    the tracking server refused, or a model's upload the artifact store cut short, ends the
    program with one line saying so (exit 1), not a traceback: neither is a bug."""
    from landmark import tracking

    setup_logging()
    configs = parse_entry_point(name, argv)
    try:
        step(*configs)
    except (tracking.AccessError, tracking.UploadError) as e:
        raise SystemExit(f"{name}: error: {e}") from None


def _build(parser: argparse.ArgumentParser, cls: type, namespace: argparse.Namespace):
    try:
        return from_args(cls, namespace)
    except ValueError as e:
        parser.error(str(e))  # exits


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )


def main(argv: list[str] | None = None) -> None:
    """The `landmark` command."""
    parser = argparse.ArgumentParser(prog="landmark", description="landmark recognition tools")
    commands = parser.add_subparsers(dest="command", required=True)
    app = commands.add_parser("app", help="the web app: drop in photos, see the landmark")
    add_arguments(app, AppConfig, switches=True)
    tag = commands.add_parser("tag", help="tag photo folders: XMP sidecars, report, folders")
    tag.add_argument("paths", nargs="*", type=Path, help="photo files or folders (recursive)")
    add_arguments(tag, TagConfig, switches=True)
    team = commands.add_parser("team", help="the team stack: tracking server, database, ...")
    actions = team.add_subparsers(dest="action", required=True)
    team_parsers = {
        "up": actions.add_parser("up", help="start the stack (reusing its data)"),
        "down": actions.add_parser("down", help="stop the stack (its data stays)"),
        "status": actions.add_parser("status", help="where the stack listens, what runs"),
        "user": actions.add_parser("user", help="add a teammate (or change their permission)"),
    }
    team_parsers["user"].add_argument("username")
    add_arguments(team_parsers["user"], UserConfig)
    for sub in team_parsers.values():
        add_arguments(sub, TeamConfig)
    args = parser.parse_args(argv)
    if args.command == "team":
        setup_logging()
        _team(team_parsers[args.action], args)
        return
    command = app if args.command == "app" else tag
    cfg = _build(command, AppConfig if args.command == "app" else TagConfig, args)
    if args.command == "tag" and bool(args.paths) == bool(cfg.apply):
        command.error("give photo folders to tag or plan, or --apply PLAN (not both)")
    setup_logging()
    if args.command == "tag":
        from landmark.runtime import tagging

        try:
            tagging.tag(args.paths, cfg)
        except tagging.InputError as e:  # a GPX file, plan or offset unfit: nothing written
            command.exit(2, f"landmark tag: error: {e}\n")
    else:
        from landmark.runtime import app as web_app
        from landmark.runtime.review import PlanError

        try:
            web_app.run(cfg)
        except PlanError as e:
            command.exit(2, f"landmark app: error: {e}\n")


def _team(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    from landmark import team

    cfg = _build(parser, TeamConfig, args)
    try:
        if args.action == "up":
            log.info("%s", team.summary(team.up(cfg)))
        elif args.action == "down":
            stopped = team.down(cfg.dir)
            log.info("Stopped: %s (data stays in %s)", ", ".join(stopped) or "nothing", cfg.dir)
        elif args.action == "status":
            log.info("%s", team.status(cfg.dir))
        else:
            path = team.add_user(cfg.dir, args.username, _build(parser, UserConfig, args))
            log.info("User %s: password in %s (readable by you only)", args.username, path)
    except team.TeamError as e:
        parser.exit(1, f"landmark team {args.action}: error: {e}\n")
