"""sasl: SMTP AUTH through saslauthd and pam_mysql (seed section 6).

/etc/default/saslauthd (START=yes, the run directory inside Postfix's chroot, -r), the run
directory itself, postfix in group sasl, /etc/pam.d/smtp with the pam_mysql lines (through
the read-only account), and /etc/postfix/sasl/smtpd.conf.
"""

from __future__ import annotations

from mailmapd.install import files
from mailmapd.install.layout import MASTER_CF, first_host
from mailmapd.install.plan import Context, InstallError, Options
from mailmapd.install.values import Values

NAME = "sasl"
DEFAULTS = "/etc/default/saslauthd"
RUN_DIR = "/var/spool/postfix/var/run/saslauthd"
PAM_SMTP = "/etc/pam.d/smtp"
SMTPD_CONF = "/etc/postfix/sasl/smtpd.conf"
OPTIONS = f'"-c -m {RUN_DIR} -r"'

START_PREAMBLE = "# Should saslauthd run automatically on startup? (default: no)"

# The seed's /etc/default/saslauthd, for a system where sasl2-bin left none.
SEED_DEFAULTS = f"""\
#
# Settings for saslauthd daemon
# Please read /usr/share/doc/sasl2-bin/README.Debian for details.
#

{START_PREAMBLE}
START=yes

# Description of this saslauthd instance. Recommended.
# (suggestion: SASL Authentication Daemon)
DESC="SASL Authentication Daemon"

# Short name of this saslauthd instance. Strongly recommended.
# (suggestion: saslauthd)
NAME="saslauthd"

# Which authentication mechanisms should saslauthd use? (default: pam)
MECHANISMS="pam"

# Additional options for this mechanism. (default: none)
MECH_OPTIONS=""

# How many saslauthd processes should we run? (default: 5)
THREADS=5

# Example for chroot Postfix users: "-c -m /var/spool/postfix/var/run/saslauthd"
OPTIONS={OPTIONS}
"""


def pam_smtp(values: Values, step: str) -> str:
    db = values.database(step)
    host, port, unix_socket = first_host(db)
    where = unix_socket or (host if port == 3306 else f"{host}:{port}")  # noqa: PLR2004 - MySQL's port
    args = (
        f"user={values.get('readonly_user', step)} passwd={values.get('readonly_password', step)} host={where}"
        f" db={db.database} table=users usercolumn=email passwdcolumn=password crypt=1"
    )
    return (
        "# Written by mailmapd install: saslauthd -r asks PAM service smtp for user@domain.\n"
        "# crypt=1: pam_mysql checks users.password with the system's crypt(3), which verifies\n"
        "# SHA512-crypt ($6$..., what `mailmapd user add` stores) as well as the DES hashes of\n"
        "# MySQL's ENCRYPT() (gone in MySQL 8). crypt=2 (MySQL PASSWORD()) would not work there.\n"
        f"auth    required   pam_mysql.so {args}\n"
        f"account sufficient pam_mysql.so {args}\n"
    )


def smtpd_conf(values: Values, step: str, *, chrooted: bool) -> str:
    db = values.database(step)
    host, port, unix_socket = first_host(db)
    sql_host = unix_socket or (host if port == 3306 else f"{host}:{port}")  # noqa: PLR2004
    lines = [
        "# Written by mailmapd install (seed section 6). smtpd asks saslauthd; the sql_* lines",
        "# are the seed's, for the auxprop plugin, through the read-only account.",
        "pwcheck_method: saslauthd",
        "mech_list: plain login",
        "allow_plaintext: true",
        "auxprop_plugin: sql",
        "sql_engine: mysql",
        f"sql_hostnames: {sql_host}",
        f"sql_user: {values.get('readonly_user', step)}",
        f"sql_passwd: {values.get('readonly_password', step)}",
        f"sql_database: {db.database}",
        "sql_select: select password from users where email = '%u@%r'",
    ]
    if not chrooted:
        # Outside the chroot smtpd would look in /var/run/saslauthd.
        lines.append(f"saslauthd_path: {RUN_DIR}/mux")
    return "\n".join(lines) + "\n"


def apply(ctx: Context, values: Values, options: Options) -> None:  # noqa: ARG001 - one signature for every component
    if values.database(NAME).scheme != "mysql":
        raise InstallError(
            NAME,
            PAM_SMTP,
            "pam_mysql needs MySQL or MariaDB, and the database is SQLite",
            "give --database-url mysql://..., or leave sasl and courier out with --only",
        )
    if ctx.accounts.group("sasl") is None:
        raise InstallError(
            NAME,
            "/etc/group",
            "group sasl does not exist (saslauthd is not installed)",
            "apt-get install sasl2-bin libpam-mysql",
        )
    outcomes = [
        ctx.edit(
            NAME,
            DEFAULTS,
            lambda text: files.set_shell_vars(
                text, {"START": "yes", "OPTIONS": OPTIONS}, preambles={"START": START_PREAMBLE}
            ),
            missing=lambda: SEED_DEFAULTS,
        ),
        ctx.ensure_dir(NAME, RUN_DIR, mode=0o710, owner="root", group="sasl"),
        ctx.put(NAME, PAM_SMTP, pam_smtp(values, NAME), mode=0o600),
    ]
    postfix_group = ctx.accounts.group("postfix")
    if postfix_group is None:
        raise InstallError(NAME, "/etc/group", "group postfix does not exist", "apt-get install postfix")
    chrooted = any(s.startswith("smtp") for s in files.chrooted_services(ctx.read_text(MASTER_CF) or "", ("smtpd",)))
    ctx.ensure_dir(NAME, "/etc/postfix/sasl", mode=0o755)
    outcomes.append(ctx.put(NAME, SMTPD_CONF, smtpd_conf(values, NAME, chrooted=chrooted), mode=0o640, group="postfix"))
    sasl = ctx.accounts.group("sasl")
    if sasl is not None and "postfix" not in sasl[1]:
        ctx.run(NAME, ["adduser", "postfix", "sasl"], "smtpd talks to saslauthd's socket, group sasl")
        outcomes.append("updated")
    if "created" in outcomes:
        ctx.warn(
            NAME,
            "pam_mysql crypt=1 verifies with crypt(3): add users with `mailmapd user add` (SHA512-crypt); "
            "MySQL 8 has no ENCRYPT() for the seed's INSERTs",
        )
    if set(outcomes) - {"unchanged", "left-alone"}:
        ctx.restart("saslauthd")
        ctx.restart("postfix")
