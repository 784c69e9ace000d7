"""Migration from the tutorial's .cf files: import-cf writes the equivalent config, and
verify compares every answer of the old files (through postmap) with mailmapd's."""

from __future__ import annotations

import dataclasses
import io
import re
import stat
from pathlib import Path

import pytest

from mailmapd.cli import main
from mailmapd.config import SEED_QUERIES, HostPort, load_config
from mailmapd.migrate import (
    DEFAULT_MYSQL_SOCKET,
    MigrateError,
    Progress,
    address_walk,
    parse_cf,
    parse_postmap_output,
    split_extension,
    transport_walk,
    verify_keys,
)
from tests import tutorial_data
from tests.conftest import load_tutorial_mysql, mysql_url
from tests.oracle import CF_FILES, SEED_CF, write_seed_cf
from tests.support.mariadb import DatabaseAccount, MariaDB
from tests.support.ports import free_port

SEED_FILES = [str(SEED_CF / name) for name in CF_FILES.values()]


def write_cf(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# --------------------------------------------------------------------------- import-cf


def test_import_seed_files_gives_the_seed_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mailmapd.toml"
    assert main(["import-cf", *SEED_FILES, "--output", str(out)]) == 0
    assert capsys.readouterr().err == ""
    assert stat.S_IMODE(out.stat().st_mode) == 0o640  # it holds the password
    cfg = load_config(out)
    for table, query in SEED_QUERIES.items():
        assert cfg.query_for(table) == query
    assert all(mc.query is None for mc in cfg.maps.values())  # the seed's queries are the defaults
    url = cfg.database.url
    assert (url.scheme, url.hosts, url.unix_socket) == ("mysql", (HostPort("127.0.0.1", 3306),), None)
    assert (url.user, url.password, url.database) == ("mail_admin", "mail_admin_password", "mail")
    assert [(lc.protocol, lc.address) for lc in cfg.listen] == [("socketmap", "inet:127.0.0.1:7979")]


def test_import_to_stdout_without_a_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # needs_config=False: a missing --config is no obstacle.
    assert main(["-c", str(tmp_path / "absent.toml"), "import-cf", *SEED_FILES]) == 0
    text = capsys.readouterr().out
    assert 'url = "mysql://mail_admin:mail_admin_password@127.0.0.1:3306/mail"' in text
    (tmp_path / "out.toml").write_text(text)
    assert load_config(tmp_path / "out.toml").query_for("quota") == SEED_QUERIES["quota"]


def test_custom_query_is_kept(tmp_path: Path) -> None:
    custom = "SELECT maildir FROM mailbox WHERE username='%s' AND active = '1'"
    cf = write_cf(
        tmp_path / "mysql_virtual_mailbox_maps.cf",
        f"user = postfix\npassword = pw\nhosts = db.test\ndbname = postfix\nquery = {custom}\n",
    )
    out = tmp_path / "out.toml"
    assert main(["import-cf", "--map", f"mailboxes={cf}", "-o", str(out)]) == 0
    cfg = load_config(out)
    assert cfg.maps["mailboxes"].query == custom
    assert cfg.query_for("domains") == SEED_QUERIES["domains"]  # no file: the seed's query
    assert "No .cf file was imported for domains, forwardings, email2email, transports, quota" in out.read_text()


def test_legacy_fields_become_a_query(tmp_path: Path) -> None:
    cf = write_cf(
        tmp_path / "mysql-virtual_forwardings.cf",
        "user = mail_admin\npassword = x\ndbname = mail\nhosts = 127.0.0.1\n"
        "select_field = destination\ntable = forwardings\nwhere_field = source\n"
        "additional_conditions = AND active = 1\n",
    )
    out = tmp_path / "out.toml"
    assert main(["import-cf", cf, "-o", str(out)]) == 0
    query = load_config(out).maps["forwardings"].query
    assert query == "SELECT destination FROM forwardings WHERE source='%s' AND active = 1"


def test_legacy_fields_without_where_field_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cf = write_cf(tmp_path / "mysql-virtual_domains.cf", "dbname = mail\nselect_field = domain\ntable = domains\n")
    assert main(["import-cf", cf]) == 65
    assert "lacks where_field" in capsys.readouterr().err


def test_parameters_without_equivalent_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cf = write_cf(
        tmp_path / "mysql-virtual_transports.cf",
        "user = mail_admin\npassword = x\ndbname = mail\nhosts = 127.0.0.1\n"
        "query = SELECT transport FROM transport WHERE domain='%s'\n"
        "result_format = smtp:[%s]\n"  # line 6
        "domain = example.test\n"
        "expansion_limit = 5\n"
        "tls_CAfile = /etc/ssl/ca.pem\n"
        "option_file = /etc/mysql/my.cnf\n"
        "idle_interval = 30\n"
        "qeury = typo\n"
        "retry_interval = 2m\n",
    )
    harmless = write_cf(
        tmp_path / "mysql-virtual_domains.cf",
        "user = mail_admin\npassword = x\ndbname = mail\nhosts = 127.0.0.1\n"
        "query = SELECT domain AS virtual FROM domains WHERE domain='%s'\n"
        "result_format = %s\nexpansion_limit = 0\ndomain =\n",
    )
    out = tmp_path / "out.toml"
    assert main(["import-cf", cf, harmless, "-o", str(out)]) == 0
    err = capsys.readouterr().err
    text = out.read_text()
    for name in ("result_format", "domain", "expansion_limit", "tls_CAfile", "option_file", "idle_interval", "qeury"):
        assert re.search(rf"{re.escape(cf)}:\d+: {name} = ", err), name
        assert re.search(rf"{re.escape(cf)}:\d+: {name} = ", text), name
    assert f"{cf}:6: result_format = smtp:[%s]" in err
    assert "mysql-virtual_domains.cf" not in err  # %s, 0 and empty change nothing
    cfg = load_config(out)
    assert cfg.database.retry_interval == 120.0  # mapped, not dropped


def test_different_credentials_are_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = "dbname = mail\nhosts = 127.0.0.1\nquery = SELECT 1 FROM d WHERE x='%s'\n"
    a = write_cf(tmp_path / "mysql-virtual_domains.cf", base + "user = a\npassword = secret-a\n")
    b = write_cf(tmp_path / "mysql-virtual_mailboxes.cf", base + "user = b\npassword = secret-b\n")
    assert main(["import-cf", a, b]) == 65
    err = capsys.readouterr().err
    assert a in err
    assert b in err
    assert "user, password" in err
    assert "secret" not in err


def test_syntax_error_names_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cf = write_cf(tmp_path / "mysql-virtual_domains.cf", "# the tutorial\nuser mail_admin\ndbname = mail\n")
    assert main(["import-cf", cf]) == 65
    assert f"{cf}:2: missing '=' after parameter name" in capsys.readouterr().err


def test_unknown_file_name_asks_for_map(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cf = write_cf(tmp_path / "aliases.cf", "dbname = mail\n")
    assert main(["import-cf", cf]) == 64
    assert "--map TABLE=" in capsys.readouterr().err


def test_main_cf_syntax_as_postfix_reads_it() -> None:
    cf = parse_cf(
        "# comment\n"
        "query = SELECT destination\n"
        "# a comment inside does not end the line\n"
        "\n"
        "    FROM forwardings WHERE source='%s' # not a comment\n"
        "user = first\n"
        "user = second\n",
        "x.cf",
    )
    assert cf.get("query") == "SELECT destination    FROM forwardings WHERE source='%s' # not a comment"
    assert cf.params["query"].line == 2
    assert cf.get("user") == "second"
    assert any("x.cf:7: user overrides line 6" in note for note in cf.notes)
    stray = parse_cf("  hosts = x\ndbname = mail\n", "y.cf")
    assert "hosts" not in stray.params
    assert stray.get("dbname") == "mail"
    with pytest.raises(MigrateError, match=r"z\.cf:1: missing parameter name"):
        parse_cf("= x\n", "z.cf")


def test_hosts_unix_inet_and_localhost(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cf = write_cf(
        tmp_path / "mysql-virtual_domains.cf",
        "hosts = unix:/var/run/mysqld/mysqld.sock, db1.test:3307 inet:db2.test\n"
        "user = u\npassword = p@ss:w/rd%?#\ndbname = mail\n"
        "query = SELECT domain AS virtual FROM domains WHERE domain='%s'\n",
    )
    out = tmp_path / "out.toml"
    assert main(["import-cf", cf, "-o", str(out)]) == 0
    url = load_config(out).database.url
    assert url.unix_socket == "/var/run/mysqld/mysqld.sock"
    assert url.hosts == (HostPort("db1.test", 3307), HostPort("db2.test", 3306))
    assert url.password == "p@ss:w/rd%?#"
    assert "random order" in capsys.readouterr().err

    local = write_cf(
        tmp_path / "mysql-virtual_mailboxes.cf", "hosts = localhost\nuser = u\ndbname = mail\n" + "query = x\n"
    )
    assert main(["import-cf", local, "-o", str(out)]) == 0
    assert load_config(out).database.url.unix_socket == DEFAULT_MYSQL_SOCKET
    err = capsys.readouterr().err
    assert "localhost" in err
    assert "unix socket" in err


# --------------------------------------------------------------------------- the walk


def test_walks_follow_postfix() -> None:
    assert address_walk("a+b@d.test", "+") == [("a+b@d.test", None), ("a@d.test", "+b"), ("@d.test", None)]
    assert address_walk("@d.test", "+") == [("@d.test", None)]
    assert split_extension("owner-list", "+-") is None
    assert split_extension("owner-list", "+") is None  # no delimiter in it
    assert split_extension("postmaster", "+") is None
    assert split_extension("+x", "+") is None
    assert split_extension("a-b+c", "+-") == ("a", "-b+c")
    assert transport_walk("u+x@a.b.test", "+") == ["u+x@a.b.test", "u@a.b.test", "a.b.test", ".b.test", ".test", "*"]


def test_verify_keys_include_variants() -> None:
    keys = verify_keys(["d.test"], ["u@d.test"], ["@d.test"], [".sub.d.test", "*"], "+")
    for key in ("d.test", "D.TEST", "@d.test", "u@d.test", "U@D.TEST", "u+tag@d.test", "U+Tag@D.TEST"):
        assert key in keys
    assert "nosuchuser7mailmapd@d.test" in keys
    assert "nosuchuser7mailmapd@x.sub.d.test" in keys
    assert len(keys) == len(set(keys))


def test_postmap_output_with_tabs_and_newlines() -> None:
    keys = ["a", "b\tc", "d", "e"]
    assert parse_postmap_output(keys, "b\tc\tvalue\nd\tline1\nline2\n") == {"b\tc": "value", "d": "line1\nline2"}


# --------------------------------------------------------------------------- verify


def write_config(path: Path, url: str, extra: str = "") -> Path:
    path.write_text(
        f'[database]\nurl = "{url}"\nconnect_timeout = 2.0\n[metrics]\naddress = ""\n'
        f'[server]\ncontrol_socket = ""\n{extra}'
    )
    return path


@pytest.fixture
def cf_dir(tutorial_account: DatabaseAccount, tmp_path: Path) -> Path:
    directory = write_seed_cf(tmp_path / "postfix", tutorial_account)
    # Debian's main.cf sets it; mailmapd's default is the same.
    with (directory / "main.cf").open("a") as f:
        f.write("recipient_delimiter = +\n")
    return directory


def test_verify_finds_no_difference_on_the_tutorial(
    tutorial_account: DatabaseAccount, cf_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path / "mailmapd.toml", mysql_url(tutorial_account))
    # The differential test's awkward keys too (quotes, %, _, backslashes, 300-byte local parts).
    extra = tmp_path / "keys.txt"
    extra.write_text("".join(k + "\n" for k in tutorial_data.probe_keys()))
    status = main(["-c", str(cfg), "verify", "--cf-dir", str(cf_dir), "--keys", str(extra)])
    out, err = capsys.readouterr()
    assert status == 0, out + err
    assert "verify: no differences" in out
    assert "DIFFERENT" not in out
    for name in ("domains", "mailboxes", "aliases", "transports", "quota"):
        assert any(line.startswith(name) for line in out.splitlines()), name
    assert err == ""


def test_verify_finds_a_planted_difference(
    tutorial_account: DatabaseAccount, cf_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # mailmapd's mailboxes query hides one user the .cf file still finds.
    hidden = (
        "[maps.mailboxes]\nquery = \"SELECT CONCAT(SUBSTRING_INDEX(email,'@',-1),'/',SUBSTRING_INDEX(email,'@',1),'/')"
        " FROM users WHERE email='%s' AND email <> 'vip@example.test'\"\n"
    )
    cfg = write_config(tmp_path / "mailmapd.toml", mysql_url(tutorial_account), hidden)
    status = main(["-c", str(cfg), "verify", "--cf-dir", str(cf_dir), "--postfix-config", str(cf_dir)])
    out, _ = capsys.readouterr()
    assert status == 1, out
    assert 'DIFFERENT mailboxes "vip@example.test": postfix "example.test/vip/", mailmapd not found' in out
    assert 'DIFFERENT mailboxes "VIP+Tag@EXAMPLE.TEST": postfix "example.test/vip/", mailmapd not found' in out
    assert all(" mailboxes " in line for line in out.splitlines() if line.startswith("DIFFERENT"))
    assert "verify: 4 differences" in out


def test_verify_database_down_is_temporary(
    private_mariadb: MariaDB, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    account = private_mariadb.create_database("mail", "mail_admin", "mail_admin_password")
    load_tutorial_mysql(account)
    directory = write_seed_cf(tmp_path / "postfix", account)
    cfg = write_config(tmp_path / "mailmapd.toml", mysql_url(account))
    private_mariadb.stop()
    assert main(["-c", str(cfg), "verify", "--cf-dir", str(directory)]) == 75
    assert "cannot read the domains" in capsys.readouterr().err


def test_verify_without_cf_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path / "mailmapd.toml", f"sqlite://{tmp_path / 'mail.db'}")
    assert main(["-c", str(cfg), "verify", "--cf-dir", str(tmp_path)]) == 66
    assert "no mysql-virtual_*.cf files" in capsys.readouterr().err


def test_verify_reports_a_recipient_delimiter_mismatch(
    tutorial_account: DatabaseAccount, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # main.cf without recipient_delimiter: today user+tag@ is unknown; mailmapd would take it.
    directory = write_seed_cf(tmp_path / "postfix", tutorial_account)
    cfg = write_config(tmp_path / "mailmapd.toml", mysql_url(tutorial_account))
    assert main(["-c", str(cfg), "verify", "--cf-dir", str(directory)]) == 1
    out, err = capsys.readouterr()
    assert "recipient_delimiter is '' but mailmapd's is '+'" in err
    assert 'DIFFERENT mailboxes "sales+tag@example.test": postfix not found, mailmapd "example.test/sales/"' in out


def test_verify_old_tables_unreachable_is_temporary(
    tutorial_account: DatabaseAccount, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    closed = dataclasses.replace(tutorial_account, port=free_port())
    directory = write_seed_cf(tmp_path / "postfix", closed)
    cfg = write_config(tmp_path / "mailmapd.toml", mysql_url(tutorial_account))
    assert main(["-c", str(cfg), "verify", "--cf-dir", str(directory)]) == 75
    assert "the lookup failed (is the database up?)" in capsys.readouterr().err


def test_progress_bar_draws_only_on_a_terminal() -> None:
    now = [0.0]
    shown = io.StringIO()
    bar = Progress(10, shown, enabled=True, clock=lambda: now[0])
    bar.advance(5, "postfix domains")
    assert "postfix domains" in shown.getvalue()
    assert " 50%" in shown.getvalue()
    bar.advance(1, "postfix domains")  # within 0.1 s: not redrawn
    assert " 60%" not in shown.getvalue()
    now[0] = 1.0
    bar.advance(5, "mailmapd domains")
    assert "100%" in shown.getvalue()
    bar.close()
    assert shown.getvalue().endswith("\r\x1b[K")
    hidden = io.StringIO()
    quiet = Progress(10, hidden, enabled=False)
    quiet.advance(10, "x")
    quiet.close()
    assert hidden.getvalue() == ""
