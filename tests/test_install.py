"""`mailmapd install`: golden files under --root, idempotence, --dry-run, hand-edited files,
--force, --uninstall, values and prompts; the schema component on a real MariaDB and on
SQLite; and Postfix's own postconf reading what install wrote.

Golden files live in tests/data/install/golden/ (paths as on the installed system). After
an intended change, rewrite them with MAILMAPD_UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pymysql
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from mailmapd import cli
from mailmapd.config import load_config
from mailmapd.install import COMPONENT_NAMES, add_commands, files, postfix, run, tls
from mailmapd.install.mailmapd_conf import runnable_problems, template
from mailmapd.install.plan import STATE_PATH, Context, InstallError, Options, State, sha256
from tests.support.mariadb import MariaDB

DATA = Path(__file__).parent / "data" / "install"
SYSTEM = DATA / "system"
GOLDEN = DATA / "golden"
UPDATE_GOLDEN = os.environ.get("MAILMAPD_UPDATE_GOLDEN") == "1"

FQDN = "mail.example.test"
ADMIN_PW = "Admin-Pass-0001"
RO_PW = "ReadOnly-Pass-0002"
EXE = "/opt/mailmapd/bin/mailmapd"
VALUES = [
    "--hostname",
    FQDN,
    "--admin-address",
    "admin@example.test",
    "--database-url",
    "mysql://127.0.0.1:3306/mail",
    "--admin-password",
    ADMIN_PW,
    "--readonly-password",
    RO_PW,
    "--mailmapd-path",
    EXE,
    "--init",
    "systemd",
]
NO_DB = ["--only", ",".join(n for n in COMPONENT_NAMES if n != "schema")]

# Files install writes whose bytes are compared with a golden copy.
GOLDEN_FILES = (
    "/etc/postfix/main.cf",
    "/etc/postfix/master.cf",
    "/etc/postfix/mailmapd-virtual-mailboxes.cf",
    "/etc/postfix/sasl/smtpd.conf",
    "/etc/default/saslauthd",
    "/etc/pam.d/smtp",
    "/etc/courier/authdaemonrc",
    "/etc/courier/authmysqlrc",
    "/etc/courier/imapd.cnf",
    "/etc/courier/pop3d.cnf",
    "/etc/aliases",
    "/etc/mailmapd/mailmapd.toml",
    "/etc/mailmapd/admin.toml",
)
# path -> (mode, owner, group) after install.
EXPECTED_META = {
    "/etc/postfix/main.cf": (0o644, "root", "root"),
    "/etc/postfix/master.cf": (0o644, "root", "root"),
    "/etc/postfix/mailmapd-virtual-mailboxes.cf": (0o640, "root", "postfix"),
    "/etc/postfix/sasl/smtpd.conf": (0o640, "root", "postfix"),
    "/etc/postfix/smtpd.key": (0o600, "root", "root"),
    "/etc/postfix/smtpd.cert": (0o644, "root", "root"),
    "/etc/default/saslauthd": (0o644, "root", "root"),
    "/etc/pam.d/smtp": (0o600, "root", "root"),
    "/etc/courier/authdaemonrc": (0o640, "root", "courier"),
    "/etc/courier/authmysqlrc": (0o640, "root", "courier"),
    "/etc/courier/authmysqlrc_orig": (0o640, "root", "courier"),
    "/etc/courier/imapd.pem": (0o640, "root", "courier"),
    "/etc/courier/pop3d.pem": (0o640, "root", "courier"),
    "/etc/aliases": (0o644, "root", "root"),
    "/etc/mailmapd/mailmapd.toml": (0o640, "root", "vmail"),
    "/etc/mailmapd/admin.toml": (0o600, "root", "root"),
    "/etc/systemd/system/mailmapd.service": (0o644, "root", "root"),
}


# ----------------------------------------------------------------------------- helpers


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mailmapd")
    add_commands(parser.add_subparsers(dest="command"))
    return parser.parse_args(["install", *argv])


class Result:
    def __init__(self, status: int, lines: list[str]) -> None:
        self.status = status
        self.lines = lines
        self.text = "\n".join(lines)


def install(root: Path, *argv: str, interactive: bool = False, answers: dict[str, str] | None = None) -> Result:
    lines: list[str] = []
    answers = answers or {}

    def ask(question: str) -> str:
        for start, answer in answers.items():
            if question.startswith(start):
                return answer
        return ""

    status = run(
        parse(["--root", str(root), *argv]), emit=lines.append, interactive=interactive, ask=ask, ask_secret=ask
    )
    return Result(status, lines)


def file_ids(root: Path) -> tuple[int, int]:
    """uid of root and the gid courier has in the fixture's /etc/group."""
    return 0, int(
        next(
            line.split(":")[2] for line in (root / "etc/group").read_text().splitlines() if line.startswith("courier:")
        )
    )


def make_system(tmp_path: Path, *, vmail: bool = True) -> Path:
    """A Debian 12 system as Postfix, sasl2-bin and the Courier packages leave it."""
    root = tmp_path / "root"
    shutil.copytree(SYSTEM, root)
    _, courier_gid = file_ids(root)
    for name, mode in (("authdaemonrc", 0o640), ("authmysqlrc", 0o640), ("imapd.cnf", 0o600), ("pop3d.cnf", 0o600)):
        path = root / "etc/courier" / name
        path.chmod(mode)
        if mode == 0o640:
            os.chown(path, 0, courier_gid)
    for name in ("imapd", "pop3d"):
        pair = tls.make_pair("localhost", {"o": "Courier Mail Server"})
        pem = root / "etc/courier" / f"{name}.pem"
        pem.write_bytes(pair.key_pem + pair.cert_pem)
        pem.chmod(0o640)
        os.chown(pem, 0, courier_gid)
    if vmail:
        with (root / "etc/passwd").open("a") as fh:
            fh.write("vmail:x:5000:5000::/home/vmail:/usr/sbin/nologin\n")
        group = (root / "etc/group").read_text().replace("sasl:x:45:", "sasl:x:45:postfix")
        (root / "etc/group").write_text(group + "vmail:x:5000:\n")
        (root / "home/vmail").mkdir(parents=True, mode=0o700)
        os.chown(root / "home/vmail", 5000, 5000)
    return root


def snapshot(root: Path) -> dict[str, tuple[bytes | None, int, int, int, int]]:
    """Every file and directory: content, mode, owner, group, mtime."""
    out: dict[str, tuple[bytes | None, int, int, int, int]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        content = path.read_bytes() if path.is_file() else None
        out[str(path.relative_to(root))] = (content, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns)
    return out


def meta(root: Path, path: str) -> tuple[int, str, str]:
    st = (root / path.lstrip("/")).stat()
    users = {int(f[2]): f[0] for f in (line.split(":") for line in (root / "etc/passwd").read_text().splitlines())}
    groups = {int(f[2]): f[0] for f in (line.split(":") for line in (root / "etc/group").read_text().splitlines())}
    return stat.S_IMODE(st.st_mode), users.get(st.st_uid, str(st.st_uid)), groups.get(st.st_gid, str(st.st_gid))


def read(root: Path, path: str) -> str:
    return (root / path.lstrip("/")).read_text()


def check_golden(root: Path, path: str) -> None:
    golden = GOLDEN / path.lstrip("/")
    actual = read(root, path)
    if UPDATE_GOLDEN:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(actual)
    assert actual == golden.read_text(), f"{path} differs from {golden} (MAILMAPD_UPDATE_GOLDEN=1 rewrites it)"


def load_cert(data: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(tls.pem_blocks(data)["CERTIFICATE"])


def load_key(data: bytes) -> rsa.RSAPrivateKey:
    block = next(v for k, v in tls.pem_blocks(data).items() if k.endswith("PRIVATE KEY"))
    key = serialization.load_pem_private_key(block, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def check_pair(key_pem: bytes, cert_pem: bytes, cn: str) -> x509.Certificate:
    cert, key = load_cert(cert_pem), load_key(key_pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == cn
    assert key.key_size >= 2048
    assert cert.not_valid_after_utc - cert.not_valid_before_utc >= dt.timedelta(days=365)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc < dt.timedelta(days=366)
    der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert key.public_key().public_bytes(*der) == cert.public_key().public_bytes(*der)
    return cert


@pytest.fixture
def system(tmp_path: Path) -> Path:
    return make_system(tmp_path)


# ----------------------------------------------------------------------------- golden files


def test_every_generated_file_matches_its_golden_copy(system: Path) -> None:
    result = install(system, *VALUES, *NO_DB)
    assert result.status == 0, result.text
    for path in GOLDEN_FILES:
        check_golden(system, path)
    for path, expected in EXPECTED_META.items():
        assert meta(system, path) == expected, path
    # The unit is the repository's template with the script's path and the daemon's user.
    unit = read(system, "/etc/systemd/system/mailmapd.service")
    lines = unit.splitlines(keepends=True)
    assert lines[0].startswith("# Rendered by `mailmapd install`")
    rendered = "".join(
        line
        for line in lines
        if not line.startswith("# Rendered")
        and not line.startswith("# console script")
        and not line.startswith("# Maildirs")
    )
    want_unit = (
        template("mailmapd.service")
        .replace("ExecStart=/usr/local/bin/mailmapd ", f"ExecStart={EXE} ")
        .replace("User=mailmapd\n", "User=vmail\n")
        .replace("Group=mailmapd\n", "Group=vmail\n")
    )
    assert rendered == want_unit
    assert f"ExecStart={EXE} --config /etc/mailmapd/mailmapd.toml serve\n" in unit
    assert not (system / "etc/systemd/system/mailmapd.socket").exists()


def test_tls_files_are_a_fresh_rsa_pair_for_the_host_name(system: Path) -> None:
    assert install(system, *VALUES, *NO_DB).status == 0
    key_pem = (system / "etc/postfix/smtpd.key").read_bytes()
    cert = check_pair(key_pem, (system / "etc/postfix/smtpd.cert").read_bytes(), FQDN)
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    ) == [FQDN]
    for name, unit in (
        ("imapd", "Automatically-generated IMAP SSL key"),
        ("pop3d", "Automatically-generated POP3 SSL key"),
    ):
        pem = (system / f"etc/courier/{name}.pem").read_bytes()
        assert pem.index(b"PRIVATE KEY") < pem.index(b"CERTIFICATE")  # one file, key first: TLS_CERTFILE
        cert = check_pair(pem, pem, FQDN)
        assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == unit
        assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Courier Mail Server"


def test_backups_hold_the_files_as_they_were(system: Path) -> None:
    before = {p: read(system, p) for p in ("/etc/postfix/main.cf", "/etc/courier/authmysqlrc", "/etc/aliases")}
    assert install(system, *VALUES, *NO_DB).status == 0
    state = State.from_json((system / STATE_PATH.lstrip("/")).read_text(), "state")
    for path, text in before.items():
        record = state.files[path]
        assert record.original_backup is not None
        assert re.fullmatch(re.escape(path) + r"\.mailmapd-backup-\d{8}-\d{6}", record.original_backup)
        assert read(system, record.original_backup) == text
        assert record.sha256 == sha256((system / path.lstrip("/")).read_bytes())
    # As the seed does it: cp authmysqlrc authmysqlrc_orig.
    assert read(system, "/etc/courier/authmysqlrc_orig") == before["/etc/courier/authmysqlrc"]
    assert state.files["/etc/mailmapd/mailmapd.toml"].created
    assert stat.S_IMODE((system / STATE_PATH.lstrip("/")).stat().st_mode) == 0o600


def test_generated_config_loads_and_matches_main_cf(system: Path) -> None:
    assert install(system, *VALUES, *NO_DB).status == 0
    cfg = load_config(system / "etc/mailmapd/mailmapd.toml")
    assert cfg.recipient_delimiter == "+"  # the fixture's main.cf has recipient_delimiter = +
    assert cfg.database.url.user == "mailmapd_ro"
    assert cfg.database.url.password == RO_PW
    assert [(lc.protocol, lc.address) for lc in cfg.listen] == [
        ("socketmap", "inet:127.0.0.1:7979"),
        ("policy", "inet:127.0.0.1:7981"),
    ]
    admin = load_config(system / "etc/mailmapd/admin.toml")
    assert (admin.database.url.user, admin.database.url.password) == ("mailmapd_admin", ADMIN_PW)


def test_postconf_reads_the_result_without_a_warning(tmp_path: Path) -> None:
    """A tutorial server's main.cf (section 5 as the seed writes it) through install, then
    through Postfix's own postconf: no "unused parameter" for the VDA lines, the maps are
    mailmapd's, and the virtual(8) override is in master.cf."""
    root = make_system(tmp_path)
    main_cf = root / "etc/postfix/main.cf"
    main_cf.write_text(main_cf.read_text() + (DATA / "seed-main.cf").read_text())
    assert install(root, *VALUES, *NO_DB).status == 0
    postconf = shutil.which("postconf") or "/usr/sbin/postconf"
    if not Path(postconf).exists():
        pytest.fail("postconf is missing: apt-get install postfix (scripts/test does)")
    shown = subprocess.run(
        [postconf, "-c", str(root / "etc/postfix"), "-n"], capture_output=True, text=True, check=True, timeout=30
    )
    # The .cf is named by its path on the installed system, which is not / here.
    warnings = [w for w in shown.stderr.splitlines() if '"/etc/postfix/mailmapd-virtual-mailboxes.cf"' not in w]
    assert warnings == []
    settings = {}
    for line in shown.stdout.splitlines():
        name, _, value = line.partition(" =")
        settings[name] = value.strip()
    for name, value in postfix.main_cf_settings(FQDN, Options()).items():
        assert settings[name] == value, name
    for name in (*postfix.VDA_PARAMETERS, "proxy_read_maps", "smtpd_use_tls"):
        assert name not in settings
    assert "proxy:mysql" not in shown.stdout
    master = subprocess.run(
        [postconf, "-c", str(root / "etc/postfix"), "-P", "virtual/unix/virtual_mailbox_maps"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert (
        master.stdout.strip() == "virtual/unix/virtual_mailbox_maps = mysql:/etc/postfix/mailmapd-virtual-mailboxes.cf"
    )


# ----------------------------------------------------------------------------- idempotence, dry run, hand edits


def test_second_run_has_nothing_to_do_and_changes_no_byte(system: Path) -> None:
    assert install(system, *VALUES, *NO_DB).status == 0
    before = snapshot(system)
    second = install(system, *NO_DB, "--mailmapd-path", EXE, "--init", "systemd")  # values from the state file
    assert second.status == 0, second.text
    assert "mailmapd install: nothing to do" in second.lines
    assert "[restart]" not in second.text
    assert snapshot(system) == before


def test_dry_run_changes_nothing_and_shows_every_diff(system: Path) -> None:
    before = snapshot(system)
    result = install(system, *VALUES, *NO_DB, "--dry-run")
    assert result.status == 0, result.text
    assert snapshot(system) == before
    for path in GOLDEN_FILES:
        assert f"+++ {path}" in result.text, path
    assert "+virtual_mailbox_domains = socketmap:inet:127.0.0.1:7979:domains" in result.text
    assert '-authmodulelist="authpam"\n+authmodulelist="authmysql"' in result.text
    assert "@@ key material" in result.text  # keys are never shown
    assert "would run: systemctl restart postfix" in result.text
    assert RO_PW not in result.text
    assert ADMIN_PW not in result.text
    assert "passwd=******** host=127.0.0.1" in result.text
    shown = install(system, *VALUES, *NO_DB, "--dry-run", "--show-passwords")
    assert f"passwd={RO_PW}" in shown.text
    assert snapshot(system) == before


def test_hand_edited_file_is_left_alone_then_replaced_with_force(system: Path) -> None:
    assert install(system, *VALUES, *NO_DB).status == 0
    main_cf = system / "etc/postfix/main.cf"
    edited = main_cf.read_text() + "# tuned by hand\nsmtpd_banner = hello\n"
    main_cf.write_text(edited)

    again = install(system, *NO_DB, "--hostname", "mx.example.test", "--mailmapd-path", EXE)
    assert again.status == 1
    assert "[postfix] /etc/postfix/main.cf: edited since mailmapd wrote it: left alone" in again.text
    assert "left alone (edited by hand): /etc/postfix/main.cf" in again.lines[-1]
    assert main_cf.read_text() == edited
    key, cert = (system / "etc/postfix/smtpd.key").read_bytes(), (system / "etc/postfix/smtpd.cert").read_bytes()
    check_pair(key, cert, "mx.example.test")

    forced = install(system, *NO_DB, "--force", "--mailmapd-path", EXE)
    assert forced.status == 0, forced.text
    assert "myhostname = mx.example.test\n" in main_cf.read_text()
    backups = sorted(system.glob("etc/postfix/main.cf.mailmapd-backup-*"))
    assert edited in [b.read_text() for b in backups]
    assert "mailmapd install: nothing to do" in install(system, *NO_DB, "--mailmapd-path", EXE).lines


def test_uninstall_restores_the_system_as_it_was(system: Path) -> None:
    before = {k: v[:4] for k, v in snapshot(system).items()}
    assert install(system, *VALUES, *NO_DB).status == 0
    result = install(system, "--uninstall")
    assert result.status == 0, result.text
    assert "/etc/courier/authmysqlrc: restored from /etc/courier/authmysqlrc.mailmapd-backup-" in result.text
    after = {k: v[:4] for k, v in snapshot(system).items()}
    assert after == before
    assert install(system, "--uninstall").lines[-1] == "mailmapd install --uninstall: nothing to undo"


def test_uninstall_leaves_a_hand_edited_file_unless_forced(system: Path) -> None:
    assert install(system, *VALUES, *NO_DB).status == 0
    aliases = system / "etc/aliases"
    aliases.write_text(aliases.read_text() + "abuse: root\n")
    result = install(system, "--uninstall")
    assert result.status == 1
    assert "/etc/aliases: edited since mailmapd wrote it: left alone" in result.text
    assert "abuse: root" in aliases.read_text()
    assert not (system / "etc/mailmapd/mailmapd.toml").exists()
    forced = install(system, "--uninstall", "--force")
    assert forced.status == 0, forced.text
    assert aliases.read_text() == (SYSTEM / "etc/aliases").read_text()
    assert any("abuse: root" in b.read_text() for b in system.glob("etc/aliases.mailmapd-backup-*"))


# ----------------------------------------------------------------------------- variants


def test_unix_sockets_inside_the_queue_directory(system: Path) -> None:
    result = install(system, *VALUES, *NO_DB, "--listen", "unix")
    assert result.status == 0, result.text
    main_cf = read(system, "/etc/postfix/main.cf")
    assert "virtual_mailbox_domains = socketmap:unix:private/mailmapd:domains\n" in main_cf
    assert "smtpd_recipient_restrictions = check_policy_service unix:private/mailmapd-policy\n" in main_cf
    unit = read(system, "/etc/systemd/system/mailmapd.socket")
    listens = [line for line in unit.splitlines() if line.startswith(("ListenStream=", "Socket"))]
    assert listens == [
        "ListenStream=/var/spool/postfix/private/mailmapd",
        "ListenStream=/var/spool/postfix/private/mailmapd-policy",
        "SocketUser=vmail",
        "SocketGroup=postfix",
        "SocketMode=0660",
    ]
    cfg = load_config(system / "etc/mailmapd/mailmapd.toml")
    assert [lc.address for lc in cfg.listen] == [
        "unix:/var/spool/postfix/private/mailmapd",
        "unix:/var/spool/postfix/private/mailmapd-policy",
    ]
    assert "systemctl enable mailmapd.service mailmapd.socket" in result.text


def test_unchrooted_smtpd_is_told_where_saslauthd_listens(system: Path) -> None:
    master = system / "etc/postfix/master.cf"
    master.write_text(
        master.read_text().replace("smtp      inet  n       -       y", "smtp      inet  n       -       n")
    )
    assert files.chrooted_services(master.read_text(), ("smtpd",)) == []
    assert install(system, *VALUES, *NO_DB).status == 0
    assert "saslauthd_path: /var/spool/postfix/var/run/saslauthd/mux\n" in read(system, "/etc/postfix/sasl/smtpd.conf")


def test_sysv_init_script_without_systemd(system: Path) -> None:
    argv = [a if a != "systemd" else "sysv" for a in VALUES]
    result = install(system, *argv, *NO_DB)
    assert result.status == 0, result.text
    script = system / "etc/init.d/mailmapd"
    assert stat.S_IMODE(script.stat().st_mode) == 0o755
    assert f"DAEMON={EXE}\n" in script.read_text()
    assert "--chuid $RUNAS:$RUNAS" in script.read_text()
    assert "RUNAS=vmail\n" in script.read_text()
    assert "not run (--root): /etc/init.d/postfix restart" in result.text
    assert not (system / "etc/systemd/system/mailmapd.service").exists()


def test_vmail_and_group_commands_are_recorded_under_root(tmp_path: Path) -> None:
    root = make_system(tmp_path, vmail=False)
    first = install(root, *VALUES, *NO_DB)
    assert first.status == 0, first.text
    for command in (
        "groupadd -g 5000 vmail",
        "useradd -g vmail -u 5000 -d /home/vmail -m -s /usr/sbin/nologin vmail",
        "adduser postfix sasl",
        "newaliases",
    ):
        assert f"not run (--root): {command}" in first.text
    before = snapshot(root)
    second = install(root, *NO_DB, "--mailmapd-path", EXE)
    assert second.lines[-2] == "mailmapd install: nothing to do"
    assert second.lines[-1].startswith("mailmapd install: still to run on the target system: groupadd -g 5000 vmail;")
    assert snapshot(root) == before


def test_vmail_with_another_uid_is_an_error(system: Path) -> None:
    passwd = system / "etc/passwd"
    passwd.write_text(passwd.read_text().replace("vmail:x:5000:5000", "vmail:x:1001:5000"))
    result = install(system, *VALUES, "--only", "vmail")
    assert result.status == os.EX_SOFTWARE
    assert "step vmail: /etc/passwd: user vmail is 1001:5000" in result.text
    assert "fix: usermod -u 5000" in result.text


def test_missing_values_are_clear_errors_without_a_terminal(system: Path) -> None:
    result = install(system, "--only", "postfix")
    assert result.status == os.EX_SOFTWARE
    assert result.lines[-1].startswith("mailmapd install: FAILED: step postfix: no value for --hostname")
    assert "fix: give --hostname VALUE" in result.lines[-1]
    bad = install(system, "--only", "postfix", "--hostname", "localhost")
    assert "not a fully qualified domain name" in bad.text


def test_prompts_on_a_terminal_and_generated_passwords_stay_hidden(system: Path) -> None:
    answers = {
        "Fully qualified host name": FQDN,
        "Where mail for root": "root@example.test",
        "Mail database": "",  # take the offered default
    }
    result = install(system, *NO_DB, "--mailmapd-path", EXE, interactive=True, answers=answers)
    assert result.status == 0, result.text
    state = State.from_json((system / STATE_PATH.lstrip("/")).read_text(), "state")
    ro, admin = state.values["readonly_password"], state.values["admin_password"]
    assert len(ro) >= 32
    assert ro != admin
    assert ro not in result.text
    assert admin not in result.text
    assert "generated a password for readonly (see --show-passwords)" in result.text
    assert f"passwd={ro} host=127.0.0.1" in read(system, "/etc/pam.d/smtp")
    assert "root: root@example.test\n" in read(system, "/etc/aliases")
    # The next run asks nothing and changes nothing.
    again = install(system, *NO_DB, "--mailmapd-path", EXE, "--show-passwords")
    assert again.lines[-2:] == [f"admin-password: {admin}", f"readonly-password: {ro}"]
    assert "mailmapd install: nothing to do" in again.lines


def test_only_runs_the_components_named(system: Path) -> None:
    before = snapshot(system)
    result = install(system, "--only", "aliases", "--admin-address", "admin@example.test")
    assert result.status == 0, result.text
    changed = {k for k, v in snapshot(system).items() if v[0] is not None and before.get(k) != v}
    assert {k for k in changed if "backup" not in k and "mailmapd-install" not in k} == {"etc/aliases"}
    assert install(system, "--only", "aliases,nonsense").status == os.EX_USAGE


def test_install_is_a_mailmapd_command_that_needs_no_config() -> None:
    args = cli.build_parser().parse_args(["install", "--dry-run", "--only", "tls"])
    assert args.needs_config is False
    assert args.handler.__module__ == "mailmapd.install"


def test_text_edits_are_idempotent() -> None:
    text = (SYSTEM / "etc/postfix/main.cf").read_text() + (DATA / "seed-main.cf").read_text()
    once = postfix.edit_main_cf(text, FQDN, Options())
    assert postfix.edit_main_cf(once, FQDN, Options()) == once
    assert files.postfix_value(once, "virtual_mailbox_limit_maps") is None
    aliases = "postmaster: root\nroot:\n   old@example.test\nabuse: root\n"
    done = files.set_aliases(aliases, {"postmaster": "root", "root": "new@example.test"})
    assert done == "postmaster: root\nroot: new@example.test\nabuse: root\n"
    assert files.set_aliases(done, {"postmaster": "root", "root": "new@example.test"}) == done
    assert files.set_common_name("[ req_dn ]\nCN=localhost\n", FQDN) == f"[ req_dn ]\nCN={FQDN}\n"
    assert files.set_common_name('cn = "localhost"\n', FQDN) == f'cn = "{FQDN}"\n'


# ----------------------------------------------------------------------------- schema: SQLite


def test_schema_on_sqlite(system: Path) -> None:
    argv = ["--hostname", FQDN, "--database-url", "sqlite:///var/lib/mailmapd/mail.db", "--mailmapd-path", EXE]
    result = install(system, *argv, "--only", "schema,postfix,mailmapd")
    assert result.status == 0, result.text
    db = system / "var/lib/mailmapd/mail.db"
    conn = sqlite3.connect(db)
    try:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'trigger')")}
        assert {"domains", "forwardings", "users", "transport", "mailmapd_changes"} <= names
        assert len({n for n in names if n.startswith("mailmapd_") and n != "mailmapd_changes"}) == 12
        conn.execute("INSERT INTO users (email, password) VALUES ('sales@example.test', 'x')")
        conn.commit()
        assert conn.execute("SELECT version FROM mailmapd_changes WHERE tbl = 'users'").fetchone() == (1,)
        # The query virtual(8) runs through Postfix's sqlite client gives the seed's path.
        query = postfix.SQLITE_MAILBOX_QUERY.replace("'%s'", "?")
        assert conn.execute(query, ("sales@example.test",)).fetchone() == ("example.test/sales/",)
    finally:
        conn.close()
    cf = read(system, "/etc/postfix/mailmapd-virtual-mailboxes.cf")
    assert "dbpath = /var/lib/mailmapd/mail.db\n" in cf
    assert "-o virtual_mailbox_maps=sqlite:/etc/postfix/mailmapd-virtual-mailboxes.cf" in read(
        system, "/etc/postfix/master.cf"
    )
    assert load_config(system / "etc/mailmapd/mailmapd.toml").database.url.path == "/var/lib/mailmapd/mail.db"
    again = install(system, *argv, "--only", "schema,postfix,mailmapd")
    assert "mailmapd install: nothing to do" in again.lines, again.text
    sasl = install(system, *argv, "--only", "sasl")
    assert sasl.status == os.EX_SOFTWARE
    assert "step sasl: /etc/pam.d/smtp: pam_mysql needs MySQL or MariaDB" in sasl.text


# ----------------------------------------------------------------------------- schema: MariaDB


def superuser_url(server: MariaDB) -> str:
    if server.socket is not None:
        return f"mysql://{server.root_user}@localhost/mysql?unix_socket={server.socket}"
    return f"mysql://root:{server.root_password or ''}@{server.host}:{server.port}/mysql"


@pytest.fixture
def mariadb_database(mariadb: MariaDB) -> Iterator[Callable[[str], tuple[str, list[str]]]]:
    """Databases made with mariadb.create_database, and install's argv for one; all dropped after."""
    made: list[str] = []

    def make(name: str) -> tuple[str, list[str]]:
        mariadb.create_database(name, f"{name}_owner", "owner-password")
        made.append(name)
        argv = [
            "--only",
            "schema",
            "--database-url",
            f"mysql://{mariadb.host}:{mariadb.port}/{name}",
            "--db-superuser-url",
            superuser_url(mariadb),
            "--admin-user",
            f"{name}_adm",
            "--admin-password",
            ADMIN_PW,
            "--readonly-user",
            f"{name}_ro",
            "--readonly-password",
            RO_PW,
        ]
        return name, argv

    yield make
    for name in made:
        mariadb.drop_database(name, f"{name}_owner")
        for user in (f"{name}_adm", f"{name}_ro"):
            mariadb.execute("".join(f"DROP USER IF EXISTS '{user}'@'{h}';" for h in ("localhost", "127.0.0.1", "%")))


def connect_as(server: MariaDB, user: str, password: str, database: str) -> pymysql.connections.Connection:
    return pymysql.connect(
        host=server.host, port=server.port, user=user, password=password, database=database, autocommit=True
    )


def test_schema_on_mariadb_creates_tables_accounts_and_triggers(
    mariadb: MariaDB, mariadb_database: Callable[[str], tuple[str, list[str]]], tmp_path: Path
) -> None:
    name, argv = mariadb_database("mmi_fresh")
    mariadb.execute(f"DROP DATABASE `{name}`")  # install creates the database itself
    result = install(tmp_path, *argv)
    assert result.status == 0, result.text
    assert f"create database {name}" in result.text
    assert RO_PW not in result.text
    tables = set(mariadb.execute("SHOW TABLES", name).split())
    assert tables == {"domains", "forwardings", "users", "transport", "mailmapd_changes"}
    assert (
        mariadb.execute(
            "SELECT COLUMN_TYPE FROM information_schema.COLUMNS WHERE TABLE_NAME = 'users' AND COLUMN_NAME = 'password'"  # noqa: S608 - the test's own database name
            f" AND TABLE_SCHEMA = '{name}'"
        ).strip()
        == "varchar(128)"
    )
    triggers = mariadb.execute(
        f"SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = '{name}'"  # noqa: S608 - ours
    ).split()
    assert len(triggers) == 12

    admin = connect_as(mariadb, f"{name}_adm", ADMIN_PW, name)
    ro = connect_as(mariadb, f"{name}_ro", RO_PW, name)
    try:
        with admin.cursor() as cur:
            cur.execute("INSERT INTO domains (domain) VALUES ('example.test')")
        with ro.cursor() as cur:
            cur.execute("SELECT domain FROM domains")
            assert cur.fetchall() == (("example.test",),)
            cur.execute("SELECT version FROM mailmapd_changes WHERE tbl = 'domains'")
            assert cur.fetchone() == (1,)  # the trigger counted the insert
            with pytest.raises(pymysql.err.OperationalError) as denied:
                cur.execute("INSERT INTO domains (domain) VALUES ('evil.test')")
            assert denied.value.args[0] == 1142  # INSERT command denied
    finally:
        admin.close()
        ro.close()

    again = install(tmp_path, *argv)
    assert again.status == 0, again.text
    assert again.lines[-1] == "mailmapd install: nothing to do"
    assert "tables, accounts and change tracking: unchanged" in again.text


def test_schema_adopts_a_tutorial_database_and_keeps_its_rows(
    mariadb: MariaDB, mariadb_database: Callable[[str], tuple[str, list[str]]], tmp_path: Path
) -> None:
    name, argv = mariadb_database("mmi_adopt")
    # The tutorial's section 4, as a server that followed it has it (password varchar(20)).
    mariadb.execute(
        """
        CREATE TABLE domains (domain varchar(50) NOT NULL, PRIMARY KEY (domain));
        CREATE TABLE forwardings (source varchar(80) NOT NULL, destination TEXT NOT NULL, PRIMARY KEY (source));
        CREATE TABLE users (email varchar(80) NOT NULL, password varchar(20) NOT NULL, quota INT(10) DEFAULT '10485760', PRIMARY KEY (email));
        CREATE TABLE transport (domain varchar(128) NOT NULL default '', transport varchar(128) NOT NULL default '', UNIQUE KEY domain (domain));
        INSERT INTO domains (domain) VALUES ('example.com');
        INSERT INTO users (email, password, quota) VALUES ('sales@example.com', 'abFfs9uPPQj2Y', 10485760);
        INSERT INTO forwardings (source, destination) VALUES ('info@example.com', 'sales@example.com');
        INSERT INTO transport (domain, transport) VALUES ('example.com', 'smtp:mail.example.com');
        """,
        name,
    )
    result = install(tmp_path, *argv)
    assert result.status == 0, result.text
    assert (
        "existing tutorial data adopted, never dropped: domains 1 rows, forwardings 1 rows, users 1 rows, transport 1 rows"
        in result.text
    )
    assert "widen users.password from varchar(20) to varchar(128)" in result.text
    assert mariadb.execute("SELECT email, password, quota FROM users", name).split() == [
        "sales@example.com",
        "abFfs9uPPQj2Y",
        "10485760",
    ]
    assert mariadb.execute("SELECT destination FROM forwardings", name).strip() == "sales@example.com"
    long_hash = "$6$" + "x" * 100
    mariadb.execute(f"UPDATE users SET password = '{long_hash}'", name)  # noqa: S608 - a constant
    assert mariadb.execute("SELECT password FROM users", name).strip() == long_hash
    assert install(tmp_path, *argv).lines[-1] == "mailmapd install: nothing to do"


def test_schema_resets_a_changed_password_and_trims_the_read_only_account(
    mariadb: MariaDB, mariadb_database: Callable[[str], tuple[str, list[str]]], tmp_path: Path
) -> None:
    name, argv = mariadb_database("mmi_drift")
    assert install(tmp_path, *argv).status == 0
    mariadb.execute(
        f"ALTER USER '{name}_ro'@'127.0.0.1' IDENTIFIED BY 'something-else';"
        f"GRANT INSERT ON `{name}`.* TO '{name}_ro'@'127.0.0.1';"
    )
    result = install(tmp_path, *argv)
    assert result.status == 0, result.text
    assert f"set the password of '{name}_ro'@'127.0.0.1'" in result.text
    assert f"take INSERT from the read-only account '{name}_ro'@'127.0.0.1'" in result.text
    grants = mariadb.execute(f"SHOW GRANTS FOR '{name}_ro'@'127.0.0.1'")
    assert "INSERT" not in grants
    ro = connect_as(mariadb, f"{name}_ro", RO_PW, name)
    try:
        with ro.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM users")
            with pytest.raises(pymysql.err.OperationalError):
                cur.execute("INSERT INTO domains (domain) VALUES ('x.test')")
    finally:
        ro.close()
    assert "mailmapd install: nothing to do" in install(tmp_path, *argv).lines


def test_schema_names_the_fix_when_the_superuser_cannot_log_in(tmp_path: Path, mariadb: MariaDB) -> None:
    argv = [
        "--only",
        "schema",
        "--database-url",
        f"mysql://{mariadb.host}:{mariadb.port}/mmi_nologin",
        "--db-superuser-url",
        f"mysql://nobody:wrong@{mariadb.host}:{mariadb.port}/mysql",
    ]
    result = install(tmp_path, *argv)
    assert result.status == os.EX_SOFTWARE
    assert "step schema:" in result.text
    assert "cannot log in to create the database and accounts" in result.text
    assert "fix: give --db-superuser-url mysql://root:PASSWORD@HOST:PORT/mysql" in result.text
    assert "wrong" not in result.text


# ----------------------------------------------------------------------------- more behaviour


def test_uninstall_under_root_lists_the_service_commands(system: Path) -> None:
    assert install(system, *VALUES, *NO_DB).status == 0
    result = install(system, "--uninstall")
    assert "not run (--root): systemctl disable --now mailmapd.service" in result.text
    assert not (system / "etc/systemd/system/mailmapd.service").exists()


def test_missing_package_file_names_step_file_and_fix(system: Path) -> None:
    (system / "etc/courier/authmysqlrc").unlink()
    result = install(system, *VALUES, "--only", "courier")
    assert result.status == os.EX_SOFTWARE
    assert result.lines[-1] == (
        "mailmapd install: FAILED: step courier: /etc/courier/authmysqlrc: no such file (Courier's MySQL module is "
        "not installed); fix: apt-get install courier-authdaemon courier-authlib-mysql courier-imap courier-pop"
    )


def test_commands_run_only_on_the_real_system_and_failures_name_the_fix() -> None:
    calls: list[tuple[str, ...]] = []

    def runner(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        calls.append(tuple(argv))
        code = 1 if argv[0] == "false" else 0
        return subprocess.CompletedProcess(list(argv), code, "", "secret-Pass-123 went wrong" if code else "")

    lines: list[str] = []
    ctx = Context(root=Path("/"), emit=lines.append, runner=runner)
    ctx.secret("secret-Pass-123")
    ctx.run("vmail", ["groupadd", "-g", "5000", "vmail"], "the mailboxes' group")
    assert calls == [("groupadd", "-g", "5000", "vmail")]
    with pytest.raises(InstallError) as failed:
        ctx.run("aliases", ["false"], "rebuild /etc/aliases.db")
    message = ctx.mask(str(failed.value))
    assert message.startswith("step aliases: `false` exited 1: ******** went wrong; fix: ")
    dry = Context(root=Path("/"), emit=lines.append, runner=runner, dry_run=True)
    dry.run("vmail", ["useradd", "vmail"], "x")
    assert len(calls) == 2  # the dry run ran nothing
    assert lines[-1] == "[vmail] would run: useradd vmail  # x"


def test_a_script_the_daemon_user_cannot_reach_is_reported(system: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="mmi", dir="/tmp"))  # pytest's tmp_path is itself 0700
    try:
        base.chmod(0o755)
        private = base / "private"
        (private / "bin").mkdir(parents=True)
        script = private / "bin" / "mailmapd"
        script.write_text("#!/usr/bin/python3\n")
        script.chmod(0o755)
        private.chmod(0o700)
        ctx = Context(root=system, emit=lambda _line: None)
        assert runnable_problems(ctx, str(script)) == [str(private)]
        private.chmod(0o755)
        assert runnable_problems(ctx, str(script)) == []
    finally:
        shutil.rmtree(base)


def test_schema_dry_run_on_mariadb_shows_sql_and_changes_nothing(
    mariadb: MariaDB, mariadb_database: Callable[[str], tuple[str, list[str]]], tmp_path: Path
) -> None:
    name, argv = mariadb_database("mmi_dry")
    result = install(tmp_path, *argv, "--dry-run")
    assert result.status == 0, result.text
    assert f"+ SQL: CREATE USER '{name}_ro'@'127.0.0.1' IDENTIFIED BY '********';" in result.text
    assert "+ SQL: CREATE TABLE IF NOT EXISTS users" in result.text
    assert RO_PW not in result.text
    assert mariadb.execute("SHOW TABLES", name).split() == []
    assert mariadb.execute(f"SELECT COUNT(*) FROM mysql.user WHERE User = '{name}_ro'").strip() == "0"  # noqa: S608 - ours
