"""Restarting what changed, at the end of a run: systemctl where systemd is PID 1, the init
scripts otherwise. Under --root or --dry-run the commands are only listed."""

from __future__ import annotations

from pathlib import Path

from mailmapd.install.plan import Context

NAME = "restart"
# Start order: the lookups before the Postfix that asks them.
ORDER = (
    "mailmapd.socket",
    "mailmapd",
    "saslauthd",
    "courier-authdaemon",
    "courier-imap",
    "courier-imap-ssl",
    "courier-pop",
    "courier-pop-ssl",
    "postfix",
)


def systemd_is_pid1() -> bool:
    """sd_booted(3): systemd is PID 1 when /run/systemd/system exists."""
    return Path("/run/systemd/system").is_dir()


def restart(ctx: Context, *, systemd: bool) -> None:
    services = sorted(ctx.restarts, key=lambda s: ORDER.index(s) if s in ORDER else len(ORDER))
    if not services:
        return
    for service in services:
        if systemd:
            ctx.run(NAME, ["systemctl", "restart", service], "load the new configuration")
        elif service == "mailmapd.socket":
            continue
        else:
            script = f"/etc/init.d/{service}"
            if ctx.live and not Path(script).exists():
                ctx.warn(NAME, f"{script}: no such init script; restart {service} by hand")
                continue
            ctx.run(NAME, [script, "restart"], "load the new configuration")
