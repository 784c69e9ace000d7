"""The ``mailmapd`` command: a function of argv that returns an exit status."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from mailmapd import __version__
from mailmapd.backends import open_backend
from mailmapd.config import DEFAULT_CONFIG_PATH, MAP_NAMES, Config, ConfigError, load_config
from mailmapd.control import send_command
from mailmapd.daemon import event_loop_factory, make_resolver, serve
from mailmapd.proto import Found, NotFound, PermFail, TempFail
from mailmapd.sdactivation import SocketActivationError

log = logging.getLogger("mailmapd")

# Exit statuses of `mailmapd query`, as postmap's users expect plus sysexits(3)'s TEMPFAIL.
EXIT_FOUND = os.EX_OK
EXIT_NOT_FOUND = 1
EXIT_TEMPFAIL = os.EX_TEMPFAIL  # 75


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error exits with EX_USAGE (64) rather than 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(os.EX_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mailmapd",
        description="Answer Postfix's virtual domain, alias, mailbox, transport and quota lookups from SQL.",
    )
    parser.add_argument("--version", action="version", version=f"mailmapd {__version__}")
    parser.add_argument(
        "--config",
        "-c",
        metavar="PATH",
        default=os.environ.get("MAILMAPD_CONFIG", DEFAULT_CONFIG_PATH),
        help="configuration file (default: $MAILMAPD_CONFIG or %(default)s)",
    )
    parser.add_argument("--debug", action="store_true", help="log every lookup (log_level = debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("serve", help="run the daemon in the foreground until SIGTERM")

    query = sub.add_parser(
        "query",
        help="look up KEY in MAP once, as Postfix would (exit 0 found, 1 not found, 75 try again)",
    )
    query.add_argument("map", metavar="MAP", choices=MAP_NAMES, help=", ".join(MAP_NAMES))
    query.add_argument("key", metavar="KEY")

    sub.add_parser("check-config", help="validate the configuration file and exit")

    flush = sub.add_parser(
        "flush",
        help="drop cached answers in the running daemon: all, one MAP's, or one KEY of one MAP",
    )
    flush.add_argument("map", metavar="MAP", nargs="?", choices=MAP_NAMES, help=", ".join(MAP_NAMES))
    flush.add_argument("key", metavar="KEY", nargs="?")

    # Command groups that live in their own modules register themselves here: each sets
    # ``handler`` (and ``needs_config=False`` when it runs without a config file).
    for module in _COMMAND_MODULES:
        importlib.import_module(module).add_commands(sub)
    return parser


# Modules with ``add_commands(subparsers)``; see docs/development.md.
_COMMAND_MODULES: tuple[str, ...] = ("mailmapd.admin", "mailmapd.migrate", "mailmapd.install")


CommandHandler = Callable[[Config | None, argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: CommandHandler | None = getattr(args, "handler", None)
    cfg: Config | None = None
    if getattr(args, "needs_config", True):
        try:
            cfg = load_config(args.config)
        except ConfigError as exc:
            print(f"mailmapd: {exc}", file=sys.stderr)
            return os.EX_CONFIG
    setup_logging("debug" if args.debug else (cfg.log_level if cfg is not None else "info"))
    if handler is not None:
        return handler(cfg, args)
    assert cfg is not None
    builtin = {
        "serve": cmd_serve,
        "query": cmd_query,
        "check-config": cmd_check_config,
        "flush": cmd_flush,
    }[args.command]
    return builtin(cfg, args)


def setup_logging(level: str) -> None:
    """mailmapd's own loggers at ``level``; libraries stay at INFO (aiosqlite logs every
    statement with its parameters at DEBUG, and those may be keys or passwords)."""
    logging.basicConfig(
        level=max(logging.INFO, logging.getLevelName(level.upper())),
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
        force=True,
    )
    logging.getLogger("mailmapd").setLevel(level.upper())


def cmd_serve(cfg: Config, _args: argparse.Namespace) -> int:
    try:
        with asyncio.Runner(loop_factory=event_loop_factory(cfg.server.event_loop)) as runner:
            runner.run(serve(cfg))
    except (ConfigError, SocketActivationError) as exc:
        print(f"mailmapd: {cfg.path}: {exc}", file=sys.stderr)
        return os.EX_CONFIG
    except OSError as exc:
        # A listener could not bind (address in use, permission, missing directory).
        where = f" {exc.filename}" if exc.filename else ""
        print(f"mailmapd: cannot listen{where}: {exc.strerror or exc}", file=sys.stderr)
        return os.EX_OSERR
    return os.EX_OK


def cmd_flush(cfg: Config, args: argparse.Namespace) -> int:
    path = cfg.server.control_socket
    if not path:
        print(f"mailmapd: {cfg.path}: server.control_socket is off", file=sys.stderr)
        return os.EX_CONFIG
    line = " ".join(["flush", *(x for x in (args.map, args.key) if x is not None)])
    try:
        reply = send_command(path, line)
    except OSError as exc:
        print(f"mailmapd: cannot reach the daemon at {path}: {exc.strerror or exc}", file=sys.stderr)
        return os.EX_UNAVAILABLE
    if not reply.startswith("OK "):
        print(f"mailmapd: {reply}", file=sys.stderr)
        return os.EX_SOFTWARE
    print(f"dropped {reply[3:]} cached answers")
    return os.EX_OK


def cmd_query(cfg: Config, args: argparse.Namespace) -> int:
    async def run() -> int:
        backend = open_backend(cfg.database)
        try:
            result = await make_resolver(cfg, backend).resolve(args.map, args.key)
        finally:
            await backend.close()
        match result:
            case Found(value):
                print(value)
                return EXIT_FOUND
            case NotFound():
                return EXIT_NOT_FOUND
            case TempFail(reason) | PermFail(reason):
                print(f"mailmapd: temporary failure: {reason}", file=sys.stderr)
                return EXIT_TEMPFAIL

    return asyncio.run(run())


def cmd_check_config(cfg: Config, _args: argparse.Namespace) -> int:
    listeners = ", ".join(f"{lc.protocol} on {lc.address}" for lc in cfg.listen) or "no listeners"
    print(f"{cfg.path}: OK (database {cfg.database.url.redacted()}; {listeners})")
    return os.EX_OK
