"""Mail through a private Postfix whose smtpd, cleanup and trivial-rewrite ask mailmapd.

mailmapd runs as a real process (``python -m mailmapd serve``) on the tutorial database in
MariaDB. Postfix is configured as docs/postfix.md tells an operator to: socketmap maps for
virtual_mailbox_domains, virtual_mailbox_maps, virtual_alias_maps and transport_maps, and
virtual(8) reading its mailbox map directly through a mysql: table (it refuses socketmap
for that security-sensitive lookup).
"""

from __future__ import annotations

import grp
import os
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
from collections.abc import Generator, Iterator
from email import message_from_bytes
from pathlib import Path

import pytest

from mailmapd.config import SEED_QUERIES
from tests.conftest import load_tutorial_mysql
from tests.support.fixtures import PostfixFactory
from tests.support.mariadb import DatabaseAccount, MariaDB
from tests.support.postfix import PostfixInstance

SENDER = "sender@client.test"


class MailmapdProcess:
    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailmapd", "-c", str(config), "serve"],
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        self.log: list[str] = []
        for line in self.proc.stderr:  # until ready; bounded by the test's timeout
            self.log.append(line)
            if "mailmapd ready" in line:
                return
        raise AssertionError("mailmapd exited before it was ready:\n" + "".join(self.log))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=15)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def start_mailmapd(tmp_path: Path, account: DatabaseAccount, socket_path: Path) -> MailmapdProcess:
    config = tmp_path / "mailmapd.toml"
    config.write_text(
        f"""
recipient_delimiter = "+"
[database]
url = "mysql://{account.user}:{account.password}@{account.host}:{account.port}/{account.database}"
[lookup]
timeout = 3.0
[cache]
positive_ttl = 0.0
negative_ttl = 0.0
poll_interval = 0.0
[metrics]
address = ""
[server]
control_socket = ""
[[listen]]
protocol = "socketmap"
address = "unix:{socket_path}"
mode = "0666"
"""
    )
    return MailmapdProcess(config)


def postfix_settings(socket_path: Path) -> dict[str, str]:
    """The main.cf lines docs/postfix.md gives, with this test's socket."""
    sm = f"socketmap:unix:{socket_path}"
    return {
        "recipient_delimiter": "+",
        "virtual_mailbox_domains": f"{sm}:domains",
        "virtual_mailbox_maps": f"{sm}:mailboxes",
        "virtual_alias_maps": f"{sm}:aliases",
        "transport_maps": f"{sm}:transports",
        "smtpd_recipient_restrictions": "permit_mynetworks, reject_unauth_destination",
    }


def direct_mailbox_map(directory: Path, account: DatabaseAccount) -> str:
    """The table virtual(8) opens itself, as `mailmapd install` writes it: root:postfix 0640.

    virtual(8) opens it after dropping privileges, so its directory must be searchable.
    """
    directory.chmod(0o755)
    cf = directory / "mailmapd-virtual-mailboxes.cf"
    settings = {
        "user": account.user,
        "password": account.password,
        "dbname": account.database,
        "hosts": f"inet:{account.host}:{account.port}",
        "query": SEED_QUERIES["mailboxes"],
    }
    cf.write_text("".join(f"{key} = {value}\n" for key, value in settings.items()))
    cf.chmod(0o640)
    os.chown(cf, 0, grp.getgrnam("postfix").gr_gid)
    return f"mysql:{cf}"


@pytest.fixture
def mail_system(
    tutorial_account: DatabaseAccount, postfix_factory: PostfixFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PostfixInstance]:
    yield from _mail_system(tutorial_account, postfix_factory, tmp_path_factory)


def _mail_system(
    account: DatabaseAccount, postfix_factory: PostfixFactory, tmp_path_factory: pytest.TempPathFactory
) -> Generator[PostfixInstance]:
    tmp = tmp_path_factory.mktemp("e2e")
    maps_dir = Path(tempfile.mkdtemp(prefix="mmcf", dir="/tmp"))  # outside pytest's 0700 tree
    socket_path = maps_dir / "mailmapd.sock"  # short: sun_path holds 108 bytes
    mailmapd = start_mailmapd(tmp, account, socket_path)
    try:
        # virtual(8) refuses socketmap for its mailbox map: it reads the database directly.
        postfix = postfix_factory(
            postfix_settings(socket_path),
            virtual_overrides={"virtual_mailbox_maps": direct_mailbox_map(maps_dir, account)},
        )
        yield postfix
    finally:
        mailmapd.stop()
        shutil.rmtree(maps_dir, ignore_errors=True)


def deliver(postfix: PostfixInstance, recipients: list[str]) -> None:
    """One SMTP transaction; SMTPUTF8 when an address needs it."""
    options = ["SMTPUTF8"] if any(not r.isascii() for r in recipients) else []
    with smtplib.SMTP("127.0.0.1", postfix.smtp_port, local_hostname="client.test", timeout=30) as smtp:
        smtp.sendmail(SENDER, recipients, b"Subject: e2e\n\nhello\n", mail_options=options)


@pytest.mark.parametrize(
    ("recipient", "mailbox"),
    [
        pytest.param("sales@example.test", "example.test/sales", id="user"),
        pytest.param("sales+tag@example.test", "example.test/sales", id="user+tag"),
        pytest.param("MIXED.CASE@mixed.example.test", "Mixed.Example.TEST/Mixed.Case", id="mixed-case"),
        pytest.param("nosuchuser@example.test", "example.test/sales", id="catch-all"),
        pytest.param("upper@MIXED.EXAMPLE.TEST", "Mixed.Example.TEST/Mixed.Case", id="alias"),
        pytest.param("josé@example.test", "example.test/josé", id="utf8"),
    ],
)
def test_mail_lands_in_the_right_maildir(mail_system: PostfixInstance, recipient: str, mailbox: str) -> None:
    deliver(mail_system, [recipient])
    (message,) = mail_system.wait_for_maildir(mailbox, 1)
    headers = message_from_bytes(message.read_bytes())
    assert headers["Subject"] == "e2e"


def test_multi_destination_alias_with_extension(mail_system: PostfixInstance) -> None:
    """info+tag@ expands to both destinations, each carrying +tag (propagate_unmatched_extensions)."""
    deliver(mail_system, ["info+tag@example.test"])
    (to_sales,) = mail_system.wait_for_maildir("example.test/sales", 1)
    (to_obrien,) = mail_system.wait_for_maildir("example.test/o'brien", 1)
    assert message_from_bytes(to_sales.read_bytes())["Delivered-To"] == "sales+tag@example.test"
    assert message_from_bytes(to_obrien.read_bytes())["Delivered-To"] == "o'brien+tag@example.test"


def test_real_mailbox_is_not_swallowed_by_the_catch_all(mail_system: PostfixInstance) -> None:
    deliver(mail_system, ["vip@example.test", "o'brien@example.test"])
    mail_system.wait_for_maildir("example.test/o'brien", 1)
    # vip has its own transport, lmtp:unix:private/dovecot-lmtp (lmtp is remapped to discard(8)
    # in this instance, which logs the nexthop): the transports map answered per address.
    mail_system.wait_for_log(r"to=<vip@example\.test>, relay=none, .*status=sent \(unix:private/dovecot-lmtp\)")
    assert not mail_system.maildir("example.test/sales").exists()


def test_unknown_user_is_refused_at_rcpt(mail_system: PostfixInstance) -> None:
    with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
        deliver(mail_system, ["nobody@mixed.example.test"])
    code, text = info.value.recipients["nobody@mixed.example.test"]
    assert code == 550
    assert b"User unknown in virtual mailbox table" in text


def test_database_down_defers_and_bounces_nothing(
    private_mariadb: MariaDB, postfix_factory: PostfixFactory, tmp_path_factory: pytest.TempPathFactory
) -> None:
    account = private_mariadb.create_database("mail", "mail_admin", "pw")
    load_tutorial_mysql(account)
    system = _mail_system(account, postfix_factory, tmp_path_factory)
    postfix = next(system)
    try:
        deliver(postfix, ["sales@example.test"])  # works while the database is up
        postfix.wait_for_maildir("example.test/sales", 1)
        private_mariadb.stop()
        for recipient in ["sales@example.test", "nobody@mixed.example.test"]:
            with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
                deliver(postfix, [recipient])
            code, text = info.value.recipients[recipient]
            assert code == 451, text
            assert b"4.3.0" in text
            assert b"Temporary lookup failure" in text
        assert postfix.queue_ids() == []  # nothing accepted, so nothing to bounce
        assert "status=bounced" not in postfix.maillog()
        private_mariadb.start()
        # virtual(8)'s own mysql: connection went stale with the restart; Postfix would defer
        # one delivery and retry. Restart its processes so this test needs no queue retry.
        subprocess.run(["postfix", "-c", str(postfix.config_dir), "reload"], check=True, capture_output=True)
        deliver(postfix, ["sales@example.test"])  # mailmapd answers again without a restart
        postfix.wait_for_maildir("example.test/sales", 2)
    finally:
        system.close()
