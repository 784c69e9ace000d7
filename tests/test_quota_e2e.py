"""The quota policy through a private Postfix smtpd (check_policy_service) on MariaDB."""

from __future__ import annotations

import shutil
import smtplib
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailmapd.schema import MYSQL_TABLES
from tests.support.fixtures import PostfixFactory
from tests.support.mariadb import DatabaseAccount, MariaDB
from tests.support.postfix import PostfixInstance
from tests.test_postfix_e2e import MailmapdProcess

REJECT = "The user you are trying to reach is over quota."
USERS = [("roomy@q.test", 1_000_000), ("full@q.test", 1000), ("small@q.test", 3000)]
FORWARDINGS = [("alias@q.test", "full@q.test"), ("out@q.test", "full@q.test, friend@elsewhere.test")]


@dataclass
class QuotaSystem:
    postfix: PostfixInstance
    db: MariaDB
    policy_socket: Path


def load(account: DatabaseAccount) -> None:
    conn = account.connect()
    with conn.cursor() as cur:
        for ddl in MYSQL_TABLES:
            cur.execute(ddl)
        cur.execute("INSERT INTO domains VALUES ('q.test')")
        for email, quota in USERS:
            cur.execute("INSERT INTO users VALUES (%s, 'x', %s)", (email, quota))
        for source, destination in FORWARDINGS:
            cur.execute("INSERT INTO forwardings VALUES (%s, %s)", (source, destination))
    conn.close()


@pytest.fixture
def quota_system(private_mariadb: MariaDB, postfix_factory: PostfixFactory) -> Iterator[QuotaSystem]:
    account = private_mariadb.create_database("mail", "mail_admin", "pw")
    load(account)
    work = Path(tempfile.mkdtemp(prefix="mmq", dir="/tmp"))
    vmail = work / "vmail"
    full = vmail / "q.test" / "full"
    for sub in ("new", "cur", "tmp"):
        (full / sub).mkdir(parents=True)
    (full / "cur" / "1.M1P1.host,S=2000:2,S").write_bytes(b"x" * 2000)  # 2000 bytes of a 1000-byte quota
    lookup_socket, policy_socket = work / "lookup.sock", work / "policy.sock"
    config = work / "mailmapd.toml"
    config.write_text(
        f"""
[database]
url = "mysql://{account.user}:{account.password}@{account.host}:{account.port}/{account.database}"
[lookup]
timeout = 2.0
[cache]
positive_ttl = 0.0
negative_ttl = 0.0
poll_interval = 0.0
[quota]
mailbox_base = "{vmail}"
[metrics]
address = ""
[server]
control_socket = ""
[[listen]]
protocol = "socketmap"
address = "unix:{lookup_socket}"
mode = "0666"
[[listen]]
protocol = "policy"
address = "unix:{policy_socket}"
mode = "0666"
"""
    )
    work.chmod(0o755)
    mailmapd = MailmapdProcess(config)
    try:
        sm = f"socketmap:unix:{lookup_socket}"
        policy = f"check_policy_service unix:{policy_socket}"
        postfix = postfix_factory(
            {
                "virtual_mailbox_domains": f"{sm}:domains",
                "virtual_mailbox_maps": f"{sm}:mailboxes",
                "virtual_alias_maps": f"{sm}:aliases",
                # Relay control and the quota check apart, as docs/postfix.md shows.
                "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
                "smtpd_recipient_restrictions": policy,
                "smtpd_end_of_data_restrictions": policy,
                "smtpd_policy_service_timeout": "10s",
            }
        )
        yield QuotaSystem(postfix, private_mariadb, policy_socket)
    finally:
        mailmapd.stop()
        shutil.rmtree(work, ignore_errors=True)


def rcpt_reply(system: QuotaSystem, recipient: str, size: int | None = None) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", system.postfix.smtp_port, local_hostname="client.test", timeout=30) as smtp:
        smtp.ehlo()
        options = [f"SIZE={size}"] if size is not None else []
        code, _ = smtp.mail("sender@client.test", options)
        assert code == 250
        return smtp.rcpt(recipient)


@pytest.mark.parametrize(
    ("recipient", "size", "code"),
    [
        pytest.param("roomy@q.test", None, 250, id="under-quota"),
        pytest.param("full@q.test", None, 552, id="over-quota"),
        pytest.param("alias@q.test", None, 552, id="alias-of-over-quota-user"),
        pytest.param("out@q.test", None, 250, id="alias-with-outside-destination"),
        pytest.param("small@q.test", 2000, 250, id="size-within-quota"),
        pytest.param("small@q.test", 5000, 552, id="size-crosses-quota"),
    ],
)
def test_rcpt(quota_system: QuotaSystem, recipient: str, size: int | None, code: int) -> None:
    got, text = rcpt_reply(quota_system, recipient, size)
    assert got == code, text
    if code == 552:
        assert REJECT.encode() in text
        assert b"5.2.2" in text


def test_end_of_message_checks_the_real_size(quota_system: QuotaSystem) -> None:
    body = b"Subject: big\r\n\r\n" + b"y" * 4000 + b"\r\n"
    with smtplib.SMTP("127.0.0.1", quota_system.postfix.smtp_port, local_hostname="client.test", timeout=30) as smtp:
        smtp.ehlo()
        smtp.mail("sender@client.test")
        assert smtp.rcpt("small@q.test")[0] == 250  # no SIZE=: nothing to refuse yet
        code, text = smtp.data(body)
    assert code == 552, text
    assert REJECT.encode() in text
    assert quota_system.postfix.queue_ids() == []


def test_database_down_answers_4xx_never_5xx(quota_system: QuotaSystem) -> None:
    quota_system.db.stop()
    try:
        code, text = rcpt_reply(quota_system, "full@q.test")
        assert 400 <= code < 500, text
        # Asked directly, the policy service defers too.
        request = b"request=smtpd_access_policy\nprotocol_state=RCPT\nrecipient=full@q.test\nsize=0\n\n"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(quota_system.policy_socket))
            sock.sendall(request)
            reply = b""
            while not reply.endswith(b"\n\n"):
                chunk = sock.recv(4096)
                assert chunk, reply
                reply += chunk
        assert reply.startswith(b"action=DEFER_IF_PERMIT "), reply
    finally:
        quota_system.db.start()
