"""courier: Courier IMAP/POP3 authenticating against the mail database (seed section 7).

authdaemonrc gets authmodulelist="authmysql"; authmysqlrc is rewritten (the original kept
as authmysqlrc_orig, as the seed does) to read users through the read-only account; the
CN of imapd.cnf and pop3d.cnf becomes the host name, and imapd.pem and pop3d.pem are made
again for it (in Python, as mkimapdcert would: key and certificate in one file).
"""

from __future__ import annotations

from mailmapd.install import files, tls
from mailmapd.install.layout import VMAIL_HOME, VMAIL_ID, first_host
from mailmapd.install.plan import Context, InstallError, Options
from mailmapd.install.values import Values

NAME = "courier"
DIR = "/etc/courier"
AUTHDAEMONRC = f"{DIR}/authdaemonrc"
AUTHMYSQLRC = f"{DIR}/authmysqlrc"
AUTHMYSQLRC_ORIG = f"{DIR}/authmysqlrc_orig"
FIX = "apt-get install courier-authdaemon courier-authlib-mysql courier-imap courier-pop"
SERVICES = ("courier-authdaemon", "courier-imap", "courier-imap-ssl", "courier-pop", "courier-pop-ssl")


def authmysqlrc(values: Values, step: str) -> str:
    db = values.database(step)
    host, port, unix_socket = first_host(db)
    lines = [
        "# Written by mailmapd install (seed section 7); the file it replaced is authmysqlrc_orig.",
        "# Users are read through mailmapd's read-only database account.",
        f"MYSQL_SERVER {host}",
        f"MYSQL_USERNAME {values.get('readonly_user', step)}",
        f"MYSQL_PASSWORD {values.get('readonly_password', step)}",
        f"MYSQL_PORT {port}",
    ]
    if unix_socket:
        lines.append(f"MYSQL_SOCKET {unix_socket}")
    lines += [
        f"MYSQL_DATABASE {db.database}",
        "MYSQL_USER_TABLE users",
        "MYSQL_CRYPT_PWFIELD password",
        "#MYSQL_CLEAR_PWFIELD password",
        f"MYSQL_UID_FIELD {VMAIL_ID}",
        f"MYSQL_GID_FIELD {VMAIL_ID}",
        "MYSQL_LOGIN_FIELD email",
        f'MYSQL_HOME_FIELD "{VMAIL_HOME}"',
        "MYSQL_MAILDIR_FIELD CONCAT(SUBSTRING_INDEX(email,'@',-1),'/',SUBSTRING_INDEX(email,'@',1),'/')",
        "#MYSQL_NAME_FIELD",
        "MYSQL_QUOTA_FIELD quota",
        # courier-authlib 0.71 (Debian 12) refuses every login without these two lines:
        # "cannot parse the MYSQL_OPT setting" and "marker line not found" (the seed's
        # emptied file predates both; tests/test_auth_peers.py runs the real daemon).
        "MYSQL_OPT 0",
        "##NAME: MARKER:0",
    ]
    return "\n".join(lines) + "\n"


def _pem(ctx: Context, name: str, fqdn: str) -> str:
    """Make /etc/courier/NAME.pem for ``fqdn`` unless it already is; returns the outcome."""
    cnf_path, pem_path = f"{DIR}/{name}.cnf", f"{DIR}/{name}.pem"
    cnf_outcome = "unchanged"
    subject: dict[str, str] = {}
    if ctx.exists(cnf_path):
        cnf_outcome = ctx.edit(NAME, cnf_path, lambda text: files.set_common_name(text, fqdn))
        subject = {k: v for k, v in files.template_fields(ctx.read_text(cnf_path) or "").items() if k != "cn"}
    else:
        ctx.warn(NAME, f"{cnf_path}: missing; the certificate gets CN={fqdn} only")
    current = ctx.read(pem_path)
    if tls.pair_is_good(current, current, fqdn):
        assert current is not None
        content = current
    else:
        pair = tls.make_pair(fqdn, subject)
        content = pair.key_pem + pair.cert_pem
    # Keep the owner and mode the package gave it (Debian: root:courier 0640), never
    # readable by others; a new file is root's alone.
    mode, owner, group = ctx.metadata(pem_path) or (0o600, "root", "root")
    pem_outcome = ctx.put(NAME, pem_path, content, mode=mode & ~0o007, owner=owner, group=group, sensitive=True)
    return "unchanged" if {cnf_outcome, pem_outcome} <= {"unchanged", "left-alone"} else "updated"


def apply(ctx: Context, values: Values, options: Options) -> None:  # noqa: ARG001 - one signature for every component
    if values.database(NAME).scheme != "mysql":
        raise InstallError(
            NAME,
            AUTHMYSQLRC,
            "Courier's authmysql needs MySQL or MariaDB, and the database is SQLite",
            "give --database-url mysql://..., or leave sasl and courier out with --only",
        )
    fqdn = values.get("fqdn", NAME)
    outcomes = [
        ctx.edit(
            NAME,
            AUTHDAEMONRC,
            lambda text: files.set_shell_vars(text, {"authmodulelist": '"authmysql"'}),
            missing_fix=FIX,
        )
    ]
    current = ctx.read(AUTHMYSQLRC)
    if current is None:
        raise InstallError(NAME, AUTHMYSQLRC, "no such file (Courier's MySQL module is not installed)", FIX)
    mode, owner, group = ctx.metadata(AUTHMYSQLRC) or (0o640, "root", "courier")
    mode &= ~0o007  # it holds a password
    if not ctx.exists(AUTHMYSQLRC_ORIG) and AUTHMYSQLRC not in ctx.state.files:
        # cp authmysqlrc authmysqlrc_orig, as the seed does.
        outcomes.append(ctx.put(NAME, AUTHMYSQLRC_ORIG, current, mode=mode, owner=owner, group=group))
    outcomes.append(ctx.put(NAME, AUTHMYSQLRC, authmysqlrc(values, NAME), mode=mode, owner=owner, group=group))
    if set(outcomes) - {"unchanged", "left-alone"}:
        ctx.restart("courier-authdaemon")
    for name, services in (
        ("imapd", ("courier-imap", "courier-imap-ssl")),
        ("pop3d", ("courier-pop", "courier-pop-ssl")),
    ):
        if _pem(ctx, name, fqdn) != "unchanged":
            for service in services:
                ctx.restart(service)
