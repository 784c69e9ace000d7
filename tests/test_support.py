"""The harness itself works: a private MariaDB answers, a private Postfix delivers to a Maildir."""

from __future__ import annotations

import smtplib
import socket
import sqlite3
import subprocess
from typing import TYPE_CHECKING

import pytest

from tests.support.mariadb import MariaDB, MariaDBError
from tests.support.ports import free_port, port_accepts
from tests.support.postfix import PostfixInstance, render_master_cf

if TYPE_CHECKING:
    from tests.support.fixtures import PostfixFactory

VIRTUAL_DELIVERY = {
    "virtual_mailbox_domains": "example.test",
    "virtual_mailbox_maps": "inline:{ user@example.test=example.test/user/ }",
}


def test_free_port_is_bindable_on_loopback() -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))


def test_mariadb_answers_a_query(mariadb: MariaDB) -> None:
    assert mariadb.execute("SELECT 1 + 1") == "2\n"
    assert mariadb.execute("SELECT @@character_set_server") == "utf8mb4\n"


def test_mariadb_user_reaches_its_database_over_tcp(mariadb: MariaDB) -> None:
    account = mariadb.create_database("harness_check", "harness_user", "pa'ss")
    try:
        mariadb.execute("CREATE TABLE t (v VARCHAR(10)); INSERT INTO t VALUES ('ok');", database="harness_check")
        client = subprocess.run(
            [
                "mariadb",
                "--no-defaults",
                "--batch",
                "--skip-column-names",
                "--protocol=TCP",
                f"--host={account.host}",
                f"--port={account.port}",
                f"--user={account.user}",
                f"--database={account.database}",
                "--execute=SELECT v FROM t",
            ],
            env={"MYSQL_PWD": account.password, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert client.stdout == "ok\n"
    finally:
        mariadb.drop_database("harness_check", user="harness_user")


def test_private_mariadb_survives_stop_kill_and_pause(private_mariadb: MariaDB) -> None:
    server = private_mariadb
    server.execute("CREATE DATABASE outage; CREATE TABLE outage.t (v INT); INSERT INTO outage.t VALUES (7);")
    port = server.port

    server.stop()
    assert not port_accepts(port)
    with pytest.raises(MariaDBError):
        server.execute("SELECT 1")

    server.start()
    assert server.port == port
    assert server.execute("SELECT v FROM outage.t") == "7\n"

    server.kill()
    server.start()
    assert server.execute("SELECT v FROM outage.t") == "7\n"

    server.pause()
    with pytest.raises(MariaDBError, match="no answer"):
        server.execute("SELECT 1", timeout=0.5)
    server.resume()
    assert server.execute("SELECT 1") == "1\n"


def test_master_cf_keeps_mail_on_this_machine() -> None:
    template = (
        "smtp      inet  n       -       y       -       -       smtpd\n"
        "submission inet n       -       y       -       -       smtpd\n"
        "  -o syslog_name=postfix/submission\n"
        "smtp      unix  -       -       y       -       -       smtp\n"
        "relay     unix  -       -       y       -       -       smtp\n"
        "        -o syslog_name=postfix/$service_name\n"
        "virtual   unix  -       n       n       -       -       virtual\n"
        "lmtp      unix  -       -       y       -       -       lmtp\n"
        "maildrop  unix  -       n       n       -       -       pipe\n"
        "  flags=DRXhu user=vmail argv=/usr/bin/maildrop -d ${recipient}\n"
    )
    rendered = render_master_cf(
        template, smtp_port=2525, virtual_overrides={"virtual_mailbox_limit": "0"}, extra="x unix - - n - - error"
    )
    assert rendered.splitlines() == [
        "127.0.0.1:2525 inet n - n - - smtpd",
        "smtp unix - - n - - discard",
        "relay unix - - n - - discard",
        "virtual unix - n n - - virtual",
        "  -o virtual_mailbox_limit=0",
        "lmtp unix - - n - - discard",
        "postlog   unix-dgram n  -       n       -       1       postlogd",
        "x unix - - n - - error",
    ]


def test_postfix_delivers_to_a_virtual_maildir(postfix_factory: PostfixFactory) -> None:
    postfix = postfix_factory(VIRTUAL_DELIVERY)

    postfix.send("sender@client.test", ["user@example.test"], "Subject: harness\n\nhello maildir\n")

    [message] = postfix.wait_for_maildir("example.test/user/")
    assert b"hello maildir" in message.read_bytes()
    assert (message.stat().st_uid, message.stat().st_gid) == (5000, 5000)
    postfix.wait_for_log(r"to=<user@example\.test>, relay=virtual, .* status=sent")
    assert postfix.queue_ids() == []
    postfix.flush()


def test_postfix_sends_nothing_off_the_machine(postfix_factory: PostfixFactory) -> None:
    postfix = postfix_factory(VIRTUAL_DELIVERY)

    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        postfix.send("sender@client.test", ["someone@elsewhere.invalid"])

    code, reply = refused.value.recipients["someone@elsewhere.invalid"]
    assert (code, b"test instance delivers nowhere" in reply) == (550, True)
    assert postfix.queue_ids() == []


def test_postmap_queries_a_sqlite_map(postfix_factory: PostfixFactory) -> None:
    postfix = postfix_factory({})
    database = postfix.maps_dir / "users.sqlite"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE mailbox (email TEXT PRIMARY KEY, maildir TEXT)")
        connection.execute("INSERT INTO mailbox VALUES ('user@example.test', 'example.test/user/')")
    connection.close()
    query = "query = SELECT maildir FROM mailbox WHERE email = '%s'\n"
    config = postfix.write_map_file("mailbox.cf", f"dbpath = {database}\n" + query)

    assert postfix.postmap_query("user@example.test", f"sqlite:{config}") == (0, "example.test/user/\n", "")
    assert postfix.postmap_query("nobody@example.test", f"sqlite:{config}") == (1, "", "")


def test_postfix_instance_stops_cleanly() -> None:
    postfix = PostfixInstance({})
    try:
        postfix.start()
        assert postfix.postconf("-h", "mydestination") == "\n"
        assert port_accepts(postfix.smtp_port)
    finally:
        postfix.close()
    assert not postfix.running
    assert not port_accepts(postfix.smtp_port)
    assert not postfix.base_dir.exists()
