"""mailmapd: its configuration and its service.

/etc/mailmapd/mailmapd.toml (0640 root:vmail: the daemon reads it, others cannot; it holds
the read-only account's password), /etc/mailmapd/admin.toml (0600 root: the admin
account, for `mailmapd --config /etc/mailmapd/admin.toml user add ...`), and the systemd
units rendered with the path of the installed console script (or, without systemd, an
init script).
"""

from __future__ import annotations

import importlib.resources
import json
import tomllib
from pathlib import Path

import mailmapd
from mailmapd.config import ConfigError, parse_config
from mailmapd.install import files
from mailmapd.install.layout import (
    ADMIN_CONFIG,
    CONFIG,
    CONFIG_DIR,
    DAEMON_USER,
    MAIN_CF,
    POLICY_SOCKET,
    SOCKETMAP_SOCKET,
    VMAIL_HOME,
    listeners,
)
from mailmapd.install.plan import Context, InstallError, Options
from mailmapd.install.values import Values

NAME = "mailmapd"
SERVICE_UNIT = "/etc/systemd/system/mailmapd.service"
SOCKET_UNIT = "/etc/systemd/system/mailmapd.socket"
INIT_SCRIPT = "/etc/init.d/mailmapd"
TEMPLATE_EXEC = "/usr/local/bin/mailmapd"


def _toml(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string


def recipient_delimiter(ctx: Context, options: Options) -> str:
    """main.cf's recipient_delimiter (as this run leaves main.cf); Postfix's default is none."""
    if options.recipient_delimiter is not None:
        return options.recipient_delimiter
    return files.postfix_value(ctx.read_text(MAIN_CF) or "", "recipient_delimiter") or ""


def render_config(url: str, delimiter: str, options: Options) -> str:
    lines = [
        "# mailmapd configuration, written by `mailmapd install` (docs/install.md).",
        "# Every key and its default: docs/configuration.md. Check: mailmapd check-config",
        "",
        "# = main.cf's recipient_delimiter",
        f"recipient_delimiter = {_toml(delimiter)}",
        "",
        "[database]",
        "# The read-only account: lookups never write.",
        f"url = {_toml(url)}",
        "",
        "[quota]",
        "# = virtual_mailbox_base",
        f"mailbox_base = {_toml(VMAIL_HOME)}",
    ]
    for protocol, address in listeners(options):
        lines += ["", "[[listen]]", f"protocol = {_toml(protocol)}", f"address = {_toml(address)}"]
    return "\n".join(lines) + "\n"


def render_admin_config(url: str, delimiter: str) -> str:
    return (
        "# The admin account, for the admin commands only (not the daemon):\n"
        "#   mailmapd --config /etc/mailmapd/admin.toml user add ...\n"
        f"recipient_delimiter = {_toml(delimiter)}\n\n"
        f"[database]\nurl = {_toml(url)}\n"
    )


def template(name: str) -> str:
    """A unit template: shipped in the package (units/), or in a source checkout's systemd/."""
    packaged = importlib.resources.files("mailmapd.install").joinpath("units", name)
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    checkout = Path(mailmapd.__file__).resolve().parent.parent / "systemd" / name
    try:
        return checkout.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InstallError(
            NAME,
            f"systemd/{name}",
            "the unit template is not installed with the package",
            "reinstall mailmapd from its source tree",
        ) from None


def _replace_once(text: str, old: str, new: str, name: str) -> str:
    if text.count(old) != 1:
        raise InstallError(
            NAME, f"systemd/{name}", f"expected the line {old.strip()!r} exactly once", "restore the template"
        )
    return text.replace(old, new)


def render_service(mailmapd_path: str) -> str:
    text = template("mailmapd.service")
    text = _replace_once(text, f"ExecStart={TEMPLATE_EXEC} ", f"ExecStart={mailmapd_path} ", "mailmapd.service")
    text = _replace_once(text, "User=mailmapd\n", f"User={DAEMON_USER}\n", "mailmapd.service")
    text = _replace_once(text, "Group=mailmapd\n", f"Group={DAEMON_USER}\n", "mailmapd.service")
    header = (
        "# Rendered by `mailmapd install` from systemd/mailmapd.service: ExecStart= names the installed\n"
        f"# console script, and the daemon runs as {DAEMON_USER} so that the quota policy can read the\n"
        "# Maildirs (docs/install.md). Change it with `systemctl edit mailmapd`, not here.\n"
    )
    return header + text


def render_socket() -> str:
    """The socket unit with the two unix sockets inside Postfix's queue directory."""
    out: list[str] = [
        "# Rendered by `mailmapd install` (--listen unix) from systemd/mailmapd.socket: systemd creates\n",
        "# the sockets inside Postfix's queue directory, where a chrooted smtpd reaches them.\n",
    ]
    for line in template("mailmapd.socket").splitlines(keepends=True):
        if line.startswith(("ListenStream=", "#ListenStream=", "#SocketUser=", "#SocketGroup=", "#SocketMode=")):
            continue
        out.append(line)
        if line.startswith("FileDescriptorName="):
            out += [
                f"ListenStream={SOCKETMAP_SOCKET}\n",
                f"ListenStream={POLICY_SOCKET}\n",
                f"SocketUser={DAEMON_USER}\n",
                "SocketGroup=postfix\n",
                "SocketMode=0660\n",
            ]
    return "".join(out)


def render_init_script(mailmapd_path: str) -> str:
    return f"""\
#!/bin/sh
### BEGIN INIT INFO
# Provides:          mailmapd
# Required-Start:    $remote_fs $network $syslog
# Required-Stop:     $remote_fs $network $syslog
# X-Start-Before:    postfix
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: mailmapd, Postfix lookups from SQL
### END INIT INFO
# Written by `mailmapd install` for a system without systemd (docs/install.md).

DAEMON={mailmapd_path}
CONFIG={CONFIG}
PIDFILE=/run/mailmapd.pid
LOG=/var/log/mailmapd.log
RUNAS={DAEMON_USER}

start() {{
    install -d -o $RUNAS -g $RUNAS -m 0755 /run/mailmapd
    install -d -o $RUNAS -g $RUNAS -m 0750 /var/lib/mailmapd
    # What systemd's StateDirectory= does: the SQLite database belongs to the daemon.
    chown -R $RUNAS:$RUNAS /var/lib/mailmapd
    touch $LOG && chown $RUNAS:$RUNAS $LOG && chmod 0640 $LOG
    start-stop-daemon --start --quiet --background --make-pidfile --pidfile $PIDFILE \\
        --chuid $RUNAS:$RUNAS --umask 027 \\
        --startas /bin/sh -- -c "exec $DAEMON --config $CONFIG serve >>$LOG 2>&1"
}}

stop() {{
    start-stop-daemon --stop --quiet --oknodo --pidfile $PIDFILE --retry TERM/30/KILL/5 --remove-pidfile
}}

case "$1" in
    start) start ;;
    stop) stop ;;
    restart|force-reload) stop; start ;;
    reload) start-stop-daemon --stop --signal HUP --quiet --pidfile $PIDFILE ;;
    status) start-stop-daemon --status --pidfile $PIDFILE ;;
    *) echo "Usage: $0 {{start|stop|restart|reload|status}}" >&2; exit 3 ;;
esac
"""


def apply(ctx: Context, values: Values, options: Options) -> None:
    delimiter = recipient_delimiter(ctx, options)
    url = values.readonly_url(NAME)
    config_text = render_config(url, delimiter, options)
    admin_text = render_admin_config(values.admin_url(NAME), delimiter)
    for text, where in ((config_text, CONFIG), (admin_text, ADMIN_CONFIG)):
        try:
            parse_config(tomllib.loads(text), where)
        except ConfigError as exc:
            raise InstallError(NAME, where, f"the generated file does not load: {exc}", "report this as a bug") from exc
    if options.listen == "unix" and options.init != "systemd":
        raise InstallError(
            NAME,
            SOCKET_UNIT,
            "--listen unix needs systemd to create the sockets in Postfix's private/",
            "use --listen inet",
        )
    ctx.say(NAME, f"recipient_delimiter = {delimiter!r} (from main.cf)")
    if ctx.live:
        for path in dict.fromkeys(runnable_problems(ctx, options.mailmapd_path)):
            ctx.warn(
                NAME,
                f"{path}: {DAEMON_USER} cannot reach it, so the service cannot start; install mailmapd where "
                f"{DAEMON_USER} can run it (pip install into /usr/local, or a virtualenv under /opt), then --mailmapd-path",
            )
    outcomes = [
        ctx.ensure_dir(NAME, CONFIG_DIR, mode=0o755),
        ctx.put(NAME, CONFIG, config_text, mode=0o640, group=DAEMON_USER),
        ctx.put(NAME, ADMIN_CONFIG, admin_text, mode=0o600),
    ]
    units: list[str] = []
    if options.init == "systemd":
        outcomes.append(ctx.put(NAME, SERVICE_UNIT, render_service(options.mailmapd_path), mode=0o644))
        units.append("mailmapd.service")
        if options.listen == "unix":
            outcomes.append(ctx.put(NAME, SOCKET_UNIT, render_socket(), mode=0o644))
            units.append("mailmapd.socket")
    else:
        outcomes.append(ctx.put(NAME, INIT_SCRIPT, render_init_script(options.mailmapd_path), mode=0o755))
    if set(outcomes) - {"unchanged", "left-alone"}:
        if options.init == "systemd":
            if _systemd_running(ctx):
                ctx.run(NAME, ["systemctl", "daemon-reload"], "load the new units")
            ctx.run(NAME, ["systemctl", "enable", *units], "start mailmapd at boot")
        else:
            ctx.run(NAME, ["update-rc.d", "mailmapd", "defaults"], "start mailmapd at boot")
        ctx.restart("mailmapd.socket" if options.listen == "unix" else "mailmapd")
        if options.listen == "unix":
            ctx.restart("mailmapd")


def _systemd_running(ctx: Context) -> bool:
    return not ctx.live or Path("/run/systemd/system").is_dir()


def before_uninstall(ctx: Context) -> None:
    """Stop and disable the service whose unit or init script --uninstall is about to remove."""
    if SERVICE_UNIT in ctx.state.files:
        ctx.run(NAME, ["systemctl", "disable", "--now", "mailmapd.service"], "the unit is being removed")
        if SOCKET_UNIT in ctx.state.files:
            ctx.run(NAME, ["systemctl", "disable", "--now", "mailmapd.socket"], "the unit is being removed")
    if INIT_SCRIPT in ctx.state.files:
        ctx.run(NAME, [INIT_SCRIPT, "stop"], "the init script is being removed")
        ctx.run(NAME, ["update-rc.d", "-f", "mailmapd", "remove"], "the init script is being removed")


def runnable_problems(ctx: Context, script: str) -> list[str]:
    """Paths on the way to the console script and its interpreter that the daemon's user
    may not search or execute (mode bits only: root-only directories like /root)."""
    user = ctx.accounts.user(DAEMON_USER)
    if user is None:
        return []
    uid, gid, _ = user
    paths = [Path(script)]
    try:
        first_line = Path(script).read_bytes().split(b"\n", 1)[0]
    except OSError:
        first_line = b""
    if first_line.startswith(b"#!"):
        paths.append(Path(first_line[2:].decode(errors="replace").strip().split()[0]))
    problems: list[str] = []
    for path in paths:
        for part in (*reversed(path.parents), path):
            try:
                st = part.stat()
            except OSError:
                continue
            if st.st_uid == uid:
                allowed = st.st_mode & 0o100
            elif st.st_gid == gid:
                allowed = st.st_mode & 0o010
            else:
                allowed = st.st_mode & 0o001
            if not allowed:
                problems.append(str(part))
                break
    return problems
