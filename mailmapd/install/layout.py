"""Where things go: the paths, ids and addresses every component agrees on."""

from __future__ import annotations

from mailmapd.config import DatabaseURL
from mailmapd.install.plan import Options

VMAIL_USER = "vmail"
VMAIL_ID = 5000
VMAIL_HOME = "/home/vmail"
# The daemon runs as vmail: the quota policy reads the Maildirs, which virtual(8) creates
# with mode 0700 (group access would not reach them); ProtectHome=read-only keeps it from
# writing there. See docs/install.md.
DAEMON_USER = VMAIL_USER

POSTFIX_DIR = "/etc/postfix"
MAIN_CF = "/etc/postfix/main.cf"
MASTER_CF = "/etc/postfix/master.cf"
MAILBOX_CF = "/etc/postfix/mailmapd-virtual-mailboxes.cf"
SPOOL = "/var/spool/postfix"

CONFIG_DIR = "/etc/mailmapd"
CONFIG = "/etc/mailmapd/mailmapd.toml"
ADMIN_CONFIG = "/etc/mailmapd/admin.toml"

SOCKETMAP_PORT = 7979
POLICY_PORT = 7981
SOCKETMAP_SOCKET = "/var/spool/postfix/private/mailmapd"
POLICY_SOCKET = "/var/spool/postfix/private/mailmapd-policy"


def socketmap(options: Options, name: str) -> str:
    """A main.cf map naming one of mailmapd's maps."""
    if options.listen == "unix":
        # Relative to the queue directory, every Postfix daemon's working directory,
        # chrooted or not (docs/operations.md).
        return f"socketmap:unix:{SOCKETMAP_SOCKET.removeprefix(SPOOL + '/')}:{name}"
    return f"socketmap:inet:127.0.0.1:{SOCKETMAP_PORT}:{name}"


def policy_service(options: Options) -> str:
    if options.listen == "unix":
        return f"unix:{POLICY_SOCKET.removeprefix(SPOOL + '/')}"
    return f"inet:127.0.0.1:{POLICY_PORT}"


def listeners(options: Options) -> list[tuple[str, str]]:
    """(protocol, address) of each [[listen]] in mailmapd.toml."""
    if options.listen == "unix":
        return [("socketmap", f"unix:{SOCKETMAP_SOCKET}"), ("policy", f"unix:{POLICY_SOCKET}")]
    return [("socketmap", f"inet:127.0.0.1:{SOCKETMAP_PORT}"), ("policy", f"inet:127.0.0.1:{POLICY_PORT}")]


def postfix_hosts(db: DatabaseURL) -> str:
    """mysql_table(5) ``hosts``."""
    if db.unix_socket:
        return f"unix:{db.unix_socket}"
    return " ".join(f"inet:[{h.host}]:{h.port}" if ":" in h.host else f"inet:{h.host}:{h.port}" for h in db.hosts)


def first_host(db: DatabaseURL) -> tuple[str, int, str | None]:
    """(host, port, unix socket) for clients that take one server (pam_mysql, Courier)."""
    if db.unix_socket:
        return "localhost", 0, db.unix_socket
    return db.hosts[0].host, db.hosts[0].port, None
