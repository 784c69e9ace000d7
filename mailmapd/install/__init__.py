"""``mailmapd install``: the seed's stack written for mailmapd, safely and repeatably.

One module per component (schema, vmail, tls, postfix, sasl, courier, aliases, mailmapd),
each with ``NAME`` and ``apply(ctx, values, options)``; plan.py holds what they write
through (backups, the state file, --root, --dry-run, --uninstall). docs/install.md.
"""

from __future__ import annotations

import argparse
import getpass
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from mailmapd.config import Config
from mailmapd.install import aliases, courier, mailmapd_conf, postfix, sasl, schema, services, tls, vmail
from mailmapd.install.plan import Context, Emit, InstallError, Options
from mailmapd.install.values import SPECS, Values

# The order they run in: accounts before the files owned by them, main.cf before the
# mailmapd config that copies its recipient_delimiter.
COMPONENTS: tuple[ModuleType, ...] = (schema, vmail, tls, postfix, sasl, courier, aliases, mailmapd_conf)
COMPONENT_NAMES: tuple[str, ...] = tuple(m.NAME for m in COMPONENTS)

EXIT_LEFT_ALONE = 1  # some files were edited by hand and left alone


def add_commands(sub: argparse._SubParsersAction[Any]) -> None:
    """Register ``install``."""
    parser = sub.add_parser(
        "install",
        help="write the Postfix/saslauthd/Courier/MySQL configuration of the tutorial stack, with mailmapd",
        description="Set up the seed's mail server with mailmapd in place of the proxy:mysql maps. See docs/install.md.",
    )
    parser.add_argument(
        "--only",
        metavar="LIST",
        help=f"comma-separated components to run (default: all): {','.join(COMPONENT_NAMES)}",
    )
    parser.add_argument("--root", metavar="DIR", default="/", help="write under DIR as if it were /; run no commands")
    parser.add_argument(
        "--dry-run", action="store_true", help="show a diff of every file and the commands; change nothing"
    )
    parser.add_argument(
        "--force", action="store_true", help="replace (after a backup) files edited since mailmapd wrote them"
    )
    parser.add_argument(
        "--uninstall", action="store_true", help="restore the backups and remove the files install created"
    )
    parser.add_argument("--no-restart", action="store_true", help="do not restart the services at the end")
    parser.add_argument("--show-passwords", action="store_true", help="print the database passwords")
    for name, spec in SPECS.items():
        parser.add_argument(spec.flag, dest=f"value_{name}", metavar="VALUE", help=spec.question)
    parser.add_argument(
        "--listen",
        choices=("inet", "unix"),
        default="inet",
        help="how Postfix reaches mailmapd: TCP on 127.0.0.1 (default), or unix sockets in Postfix's private/",
    )
    parser.add_argument(
        "--init",
        choices=("auto", "systemd", "sysv"),
        default="auto",
        help="service manager (auto: systemd if it is PID 1)",
    )
    parser.add_argument("--mailmapd-path", metavar="PATH", help="the installed console script (default: found)")
    parser.add_argument("--recipient-delimiter", metavar="CHARS", help="default: main.cf's recipient_delimiter")
    parser.set_defaults(handler=cmd_install, needs_config=False)


def _write(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def find_console_script() -> str | None:
    argv0 = Path(sys.argv[0])
    if argv0.name == "mailmapd" and argv0.is_absolute() and argv0.is_file():
        return str(argv0)
    sibling = Path(sys.executable).with_name("mailmapd")
    if sibling.is_file():
        return str(sibling)
    return shutil.which("mailmapd")


def cmd_install(_cfg: Config | None, args: argparse.Namespace) -> int:
    return run(args, emit=_write, interactive=sys.stdin.isatty(), ask=input, ask_secret=getpass.getpass)


def run(
    args: argparse.Namespace,
    *,
    emit: Emit,
    interactive: bool = False,
    ask: Callable[[str], str] = input,
    ask_secret: Callable[[str], str] = getpass.getpass,
) -> int:
    """The whole command; tests call it with their own ``emit``."""
    selected = _selected(args.only)
    if selected is None:
        emit(f"mailmapd install: --only: unknown component in {args.only!r} (known: {','.join(COMPONENT_NAMES)})")
        return os.EX_USAGE
    root = Path(args.root).resolve()
    if not root.is_dir():
        emit(f"mailmapd install: --root {args.root}: not a directory")
        return os.EX_USAGE
    try:
        ctx = Context(root=root, emit=emit, dry_run=args.dry_run, force=args.force, show_passwords=args.show_passwords)
    except InstallError as exc:
        emit(f"mailmapd install: {exc}")
        return os.EX_CONFIG
    ctx.secret(*(v for k, v in ctx.state.values.items() if SPECS.get(k) and SPECS[k].secret))
    if args.uninstall:
        try:
            mailmapd_conf.before_uninstall(ctx)
            ctx.uninstall()
        except InstallError as exc:
            emit(ctx.mask(f"mailmapd install --uninstall: FAILED: {exc}"))
            ctx.save_state()
            return os.EX_SOFTWARE
        ctx.save_state()
        emit("mailmapd install --uninstall: " + ("done" if ctx.changed else "nothing to undo"))
        return EXIT_LEFT_ALONE if ctx.left_alone else os.EX_OK

    systemd = services.systemd_is_pid1() if root == Path("/") else True
    init: Literal["systemd", "sysv"] = "systemd" if systemd else "sysv"
    if args.init in {"systemd", "sysv"}:
        init = args.init
    mailmapd_path = args.mailmapd_path or find_console_script()
    if "mailmapd" in selected and mailmapd_path is None:
        emit(
            "mailmapd install: step mailmapd: cannot find the installed mailmapd script; fix: give --mailmapd-path PATH"
        )
        return os.EX_CONFIG
    options = Options(
        listen=args.listen,
        init=init,
        mailmapd_path=mailmapd_path or "/usr/local/bin/mailmapd",
        recipient_delimiter=args.recipient_delimiter,
        restart=not args.no_restart,
    )
    flags = {name: getattr(args, f"value_{name}") for name in SPECS}
    values = Values(ctx, flags, interactive=interactive, ask=ask, ask_secret=ask_secret)
    mode = (
        "dry run: nothing is changed" if args.dry_run else (f"under {root}" if root != Path("/") else "on this system")
    )
    emit(f"mailmapd install ({mode}): {', '.join(m.NAME for m in COMPONENTS if m.NAME in selected)}")
    previous_pending = list(ctx.state.pending_commands)
    for service in ctx.state.pending_restarts if ctx.live else ():
        ctx.restart(service)
    status = os.EX_OK
    try:
        for module in COMPONENTS:
            if module.NAME in selected:
                module.apply(ctx, values, options)
    except InstallError as exc:
        emit(ctx.mask(f"mailmapd install: FAILED: {exc}"))
        status = os.EX_SOFTWARE
    actions = [c.shell() for c in ctx.commands]
    new_actions = [c for c in actions if c not in previous_pending]
    if not ctx.live and not args.dry_run:
        ctx.state.pending_commands = list(dict.fromkeys([*previous_pending, *actions]))
    worked = bool(ctx.changed or new_actions)
    leftover = [s for s in ctx.restarts if s in ctx.state.pending_restarts]
    if status == os.EX_OK and (worked or (ctx.live and ctx.restarts)) and options.restart:
        try:
            services.restart(ctx, systemd=init == "systemd")
        except InstallError as exc:
            emit(ctx.mask(f"mailmapd install: FAILED: {exc}"))
            status = os.EX_SOFTWARE
        else:
            ctx.state.pending_restarts = []
    elif ctx.restarts and (worked or leftover):
        if ctx.live:
            ctx.state.pending_restarts = list(dict.fromkeys([*ctx.state.pending_restarts, *ctx.restarts]))
        if not options.restart:
            emit(f"mailmapd install: --no-restart: restart {', '.join(ctx.restarts)} yourself")
    ctx.save_state()
    code = status
    if status == os.EX_OK and ctx.left_alone:
        emit(f"mailmapd install: left alone (edited by hand): {', '.join(p for _, p in ctx.left_alone)}; see --force")
        code = EXIT_LEFT_ALONE
    elif status == os.EX_OK and not worked:
        emit("mailmapd install: nothing to do")
        if leftover and ctx.live:
            verb = "restarted, left from an earlier run" if options.restart else "still to restart"
            emit(f"mailmapd install: {verb}: {', '.join(leftover)}")
        if previous_pending and not ctx.live:
            emit(f"mailmapd install: still to run on the target system: {'; '.join(previous_pending)}")
    elif status == os.EX_OK and args.dry_run:
        emit("mailmapd install: dry run: nothing was changed")
    elif status == os.EX_OK:
        emit(f"mailmapd install: done ({len(ctx.changed)} changes, {len(new_actions)} commands)")
    if args.show_passwords:
        for name in ("admin_password", "readonly_password"):
            if name in ctx.state.values:
                emit(f"{SPECS[name].flag.lstrip('-')}: {ctx.state.values[name]}")
    return code


def _selected(only: str | None) -> set[str] | None:
    if not only:
        return set(COMPONENT_NAMES)
    names = {n.strip() for n in only.split(",") if n.strip()}
    return names if names <= set(COMPONENT_NAMES) else None


def main(argv: Sequence[str]) -> int:
    """``mailmapd install ARGS`` without the rest of the CLI (for tests and scripts)."""
    parser = argparse.ArgumentParser(prog="mailmapd")
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["install", *argv])
    return run(args, emit=_write)
