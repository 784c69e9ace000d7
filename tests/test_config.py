"""The configuration file: the shipped example, every error path, and ``check-config``."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import os
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import mailmapd
from mailmapd.cli import main
from mailmapd.config import (
    MAP_NAMES,
    SEED_QUERIES,
    Config,
    ConfigError,
    DatabaseConfig,
    DatabaseURL,
    HostPort,
    ListenConfig,
    LookupConfig,
    MapConfig,
    ServerConfig,
    load_config,
    parse_config,
    parse_database_url,
)
from mailmapd.sqltemplate import MYSQL, SQLITE, QueryTemplate

EXAMPLE = Path(__file__).resolve().parents[1] / "conf" / "mailmapd.toml"
SECTIONS: dict[str, DatabaseConfig | LookupConfig | ServerConfig] = {
    "database": DatabaseConfig(),
    "lookup": LookupConfig(),
    "server": ServerConfig(),
}
TOP_LEVEL = {f.name for f in dataclasses.fields(Config)} - {"path", "listen", "maps", *SECTIONS}

# A commented-out setting of the example: "# key = value", "# [table]" or "# [[array]]".
COMMENTED_SETTING = re.compile(r"# (\[\[?[a-z0-9_.]+\]\]?|[a-z_]+ = .+)")

SOCKETMAP = '[[listen]]\nprotocol = "socketmap"\naddress = "inet:127.0.0.1:7979"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mailmapd.toml"
    path.write_text(text)
    return path


def load(tmp_path: Path, text: str) -> Config:
    return load_config(write(tmp_path, text))


def error(tmp_path: Path, text: str) -> tuple[Path, str]:
    """The file written and the ConfigError message loading it gives."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return path, str(info.value)


def assert_names(path: Path, message: str, key: str, fragment: str) -> None:
    """The message starts with the file and the key's dotted path, and says what is wrong."""
    assert message.startswith(f"{path}: {key}: "), message
    assert fragment in message, message


def commented_settings(text: str) -> dict[str, Any]:
    """The example's commented-out settings, parsed as the TOML they would be uncommented."""
    lines = [m.group(1) for line in text.splitlines() if (m := COMMENTED_SETTING.fullmatch(line))]
    return tomllib.loads("\n".join(lines))


# --------------------------------------------------------------------------- the example


def test_example_sets_only_defaults() -> None:
    raw = tomllib.loads(EXAMPLE.read_text())
    cfg = load_config(EXAMPLE)
    assert cfg.path == str(EXAMPLE)
    checked = []
    for key, value in raw.items():
        if key in SECTIONS:
            for name in value:
                assert getattr(getattr(cfg, key), name) == getattr(SECTIONS[key], name), f"{key}.{name}"
                checked.append(f"{key}.{name}")
        elif key == "maps":
            for map_name, section in value.items():
                for name in section:
                    assert getattr(cfg.map_config(map_name), name) == getattr(MapConfig(), name)
                    checked.append(f"maps.{map_name}.{name}")
        elif key != "listen":  # listeners have no default; see test_example_listeners
            assert getattr(cfg, key) == getattr(Config(), key), key
            checked.append(key)
    assert "database.url" in checked
    assert "maps.aliases.propagate_extension" in checked


def test_example_listeners() -> None:
    assert load_config(EXAMPLE).listen == (
        ListenConfig("socketmap", "inet:127.0.0.1:7979"),
        ListenConfig("tcp_table", "inet:127.0.0.1:7980", map="mailboxes"),
    )


def test_example_lists_every_key() -> None:
    text = EXAMPLE.read_text()
    raw, commented = tomllib.loads(text), commented_settings(text)
    assert raw.keys() >= TOP_LEVEL
    for section, defaults in SECTIONS.items():
        assert raw[section].keys() >= {f.name for f in dataclasses.fields(defaults)}, section
    listen_keys = {k for item in raw["listen"] + commented["listen"] for k in item}
    assert {f.name for f in dataclasses.fields(ListenConfig)} <= listen_keys
    map_keys = {k for maps in (raw["maps"], commented["maps"]) for section in maps.values() for k in section}
    assert {f.name for f in dataclasses.fields(MapConfig)} <= map_keys


def test_example_commented_queries_are_the_seed_defaults() -> None:
    commented = commented_settings(EXAMPLE.read_text())["maps"]
    assert {name: section["query"] for name, section in commented.items()} == SEED_QUERIES


def test_example_commented_unix_listener_is_valid() -> None:
    commented = commented_settings(EXAMPLE.read_text())
    cfg = parse_config(commented, "commented")
    assert cfg.listen == (
        ListenConfig("policy", "inet:127.0.0.1:7981"),
        ListenConfig(
            "socketmap", "unix:/var/spool/postfix/private/mailmapd", mode=0o660, owner="mailmapd", group="postfix"
        ),
    )


def test_empty_file_is_the_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    assert load_config(path) == dataclasses.replace(Config(), path=str(path))


def test_defaults() -> None:
    cfg = Config()
    assert cfg.database.url == DatabaseURL("sqlite", path="/var/lib/mailmapd/mail.db")
    assert (cfg.recipient_delimiter, cfg.log_level, cfg.listen, cfg.maps) == ("+", "info", (), {})
    assert cfg.map_config("aliases") == MapConfig(query=None, propagate_extension=True)


def test_seed_queries_cover_every_map_but_aliases() -> None:
    assert set(MAP_NAMES) == {"domains", "mailboxes", "aliases", "transports", "quota", "forwardings", "email2email"}
    assert SEED_QUERIES.keys() == set(MAP_NAMES) - {"aliases"}
    for name, query in SEED_QUERIES.items():
        assert Config().query_for(name) == query
        for dialect in (MYSQL, SQLITE):
            assert QueryTemplate.parse(query).compile(dialect).slots == ("s",), name


# --------------------------------------------------------------------------- reading


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: cannot read: No such file or directory$"):
        load_config(path)


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"^{re.escape(str(tmp_path))}: cannot read: "):
        load_config(tmp_path)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"log_level = ", id="syntax"),
        pytest.param(b'log_level = "info"\nlog_level = "debug"\n', id="duplicate-key"),
        pytest.param(b'log_level = "\xff"\n', id="not-utf8"),
    ],
)
def test_not_toml(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(data)
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: not valid TOML: "):
        load_config(path)


# --------------------------------------------------------------------------- keys and types

KEY_ERRORS = [
    # Unknown keys, at every level.
    pytest.param("bogus = 1", "bogus", "unknown key", id="unknown-top-level"),
    pytest.param('path = "/etc/x.toml"', "path", "unknown key", id="path-is-not-a-setting"),
    pytest.param("[tracing]\nport = 9100", "tracing", "unknown key", id="unknown-section"),
    pytest.param("[metrics]\nport = 9100", "metrics.port", "unknown key", id="unknown-metrics-key"),
    pytest.param("[database]\npool_szie = 5", "database.pool_szie", "unknown key", id="unknown-database"),
    pytest.param("[lookup]\ntimout = 5", "lookup.timout", "unknown key", id="unknown-lookup"),
    pytest.param("[server]\nmax_conections = 5", "server.max_conections", "unknown key", id="unknown-server"),
    pytest.param(SOCKETMAP + "port = 7979", "listen[0].port", "unknown key", id="unknown-listen"),
    pytest.param('[maps.domains]\nquerry = "x"', "maps.domains.querry", "unknown key", id="unknown-map-key"),
    pytest.param(
        "[maps.aliases]\npropagate_extensions = true",
        "maps.aliases.propagate_extensions",
        "unknown key",
        id="unknown-aliases-key",
    ),
    # Wrong types.
    pytest.param("recipient_delimiter = 1", "recipient_delimiter", "expected a string", id="delimiter-int"),
    pytest.param("log_level = true", "log_level", "expected a string", id="log-level-bool"),
    pytest.param("[database]\nurl = 5", "database.url", "expected a string", id="url-int"),
    pytest.param(
        '[database]\nconnect_timeout = "3"',
        "database.connect_timeout",
        "expected a number of seconds",
        id="string-for-seconds",
    ),
    pytest.param(
        "[database]\nconnect_timeout = true",
        "database.connect_timeout",
        "expected a number of seconds",
        id="bool-for-seconds",
    ),
    pytest.param(
        '[database]\nretry_interval = "60s"',
        "database.retry_interval",
        "expected a number of seconds",
        id="unit-suffix",
    ),
    pytest.param(
        "[database]\npool_recycle = [600]", "database.pool_recycle", "expected a number of seconds", id="array"
    ),
    pytest.param('[database]\npool_size = "10"', "database.pool_size", "expected an integer", id="string-for-int"),
    pytest.param("[database]\npool_size = true", "database.pool_size", "expected an integer", id="bool-for-int"),
    pytest.param("[database]\npool_size = 10.0", "database.pool_size", "expected an integer", id="float-for-int"),
    pytest.param('[lookup]\ntimeout = "5"', "lookup.timeout", "expected a number of seconds", id="lookup-string"),
    pytest.param("[server]\nmax_connections = 1.5", "server.max_connections", "expected an integer", id="server-float"),
    pytest.param("[server]\nmax_pipelined = false", "server.max_pipelined", "expected an integer", id="server-bool"),
    pytest.param(
        "[server]\nidle_timeout = {}", "server.idle_timeout", "expected a number of seconds", id="server-table"
    ),
    pytest.param(
        '[server]\nshutdown_timeout = "10"',
        "server.shutdown_timeout",
        "expected a number of seconds",
        id="shutdown-string",
    ),
    pytest.param(
        '[maps.aliases]\npropagate_extension = "yes"',
        "maps.aliases.propagate_extension",
        "expected true or false",
        id="string-for-bool",
    ),
    pytest.param(
        "[maps.aliases]\npropagate_extension = 1",
        "maps.aliases.propagate_extension",
        "expected true or false",
        id="int-for-bool",
    ),
    pytest.param("[maps.domains]\nquery = 1", "maps.domains.query", "expected a string", id="query-int"),
    pytest.param(
        '[[listen]]\nprotocol = 1\naddress = "inet:127.0.0.1:7979"',
        "listen[0].protocol",
        "must be one of",
        id="protocol-int",
    ),
    pytest.param(
        '[[listen]]\nprotocol = "socketmap"\naddress = 7979', "listen[0].address", "expected a string", id="address-int"
    ),
    pytest.param(
        '[[listen]]\nprotocol = "socketmap"\naddress = "unix:/run/m.sock"\nowner = 5000',
        "listen[0].owner",
        "expected a string",
        id="owner-uid",
    ),
    pytest.param(
        '[[listen]]\nprotocol = "socketmap"\naddress = "unix:/run/m.sock"\ngroup = 5000',
        "listen[0].group",
        "expected a string",
        id="group-gid",
    ),
    pytest.param(
        '[[listen]]\nprotocol = "tcp_table"\naddress = "inet:127.0.0.1:7980"\nmap = true',
        "listen[0].map",
        "expected a string",
        id="map-bool",
    ),
    # Sections of the wrong shape.
    pytest.param('database = "sqlite:///x.db"', "database", "expected a table", id="database-string"),
    pytest.param("lookup = 5", "lookup", "expected a table", id="lookup-int"),
    pytest.param("server = []", "server", "expected a table", id="server-array"),
    pytest.param('maps = "domains"', "maps", "expected a table", id="maps-string"),
    pytest.param('[maps]\ndomains = "SELECT 1"', "maps.domains", "expected a table", id="map-string"),
    pytest.param(
        '[listen]\nprotocol = "socketmap"\naddress = "inet:127.0.0.1:7979"',
        "listen",
        "expected an array of tables ([[listen]])",
        id="listen-table",
    ),
    pytest.param('listen = ["inet:127.0.0.1:7979"]', "listen[0]", "expected a table", id="listen-item-string"),
    # Values.
    pytest.param(
        'recipient_delimiter = "@"', "recipient_delimiter", "must not contain whitespace or '@'", id="delimiter-at"
    ),
    pytest.param(
        'recipient_delimiter = "+ "', "recipient_delimiter", "must not contain whitespace or '@'", id="delimiter-space"
    ),
    pytest.param(
        'log_level = "verbose"', "log_level", "must be one of debug, info, warning, error", id="log-level-unknown"
    ),
    pytest.param('log_level = "INFO"', "log_level", "must be one of debug, info, warning, error", id="log-level-case"),
]


@pytest.mark.parametrize(("text", "key", "fragment"), KEY_ERRORS)
def test_key_error(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    path, message = error(tmp_path, text)
    assert_names(path, message, key, fragment)


# The keys that must be greater than zero.
POSITIVE = [
    pytest.param("database", "connect_timeout", id="connect-timeout"),
    pytest.param("database", "pool_size", id="pool-size"),
    pytest.param("lookup", "timeout", id="lookup-timeout"),
    pytest.param("server", "max_connections", id="max-connections"),
    pytest.param("server", "idle_timeout", id="idle-timeout"),
    pytest.param("server", "max_pipelined", id="max-pipelined"),
]


@pytest.mark.parametrize("value", ["0", "-1"])
@pytest.mark.parametrize(("section", "key"), POSITIVE)
def test_must_be_positive(tmp_path: Path, section: str, key: str, value: str) -> None:
    path, message = error(tmp_path, f"[{section}]\n{key} = {value}")
    assert_names(path, message, f"{section}.{key}", "must be greater than zero")


@pytest.mark.parametrize(("section", "key"), POSITIVE)
def test_smallest_positive_value_is_accepted(tmp_path: Path, section: str, key: str) -> None:
    kind = type(getattr(SECTIONS[section], key))
    smallest = "1" if kind is int else "0.001"
    assert getattr(getattr(load(tmp_path, f"[{section}]\n{key} = {smallest}"), section), key) == kind(smallest)


def test_integer_seconds_become_float(tmp_path: Path) -> None:
    cfg = load(tmp_path, "[database]\nconnect_timeout = 2\n[lookup]\ntimeout = 1")
    assert cfg.database.connect_timeout == 2.0
    assert isinstance(cfg.database.connect_timeout, float)
    assert isinstance(cfg.lookup.timeout, float)


def test_every_key_set(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        'recipient_delimiter = "+-"\nlog_level = "debug"\n'
        '[database]\nurl = "mysql://mail:pw@db/mail"\nconnect_timeout = 1.5\nretry_interval = 30\n'
        "pool_size = 4\npool_recycle = 300.0\n"
        "[lookup]\ntimeout = 2.5\n"
        "[server]\nmax_connections = 50\nidle_timeout = 30\nmax_pipelined = 8\nshutdown_timeout = 2\n",
    )
    assert (cfg.recipient_delimiter, cfg.log_level) == ("+-", "debug")
    assert cfg.database == DatabaseConfig(
        url=DatabaseURL("mysql", hosts=(HostPort("db", 3306),), user="mail", password="pw", database="mail"),
        connect_timeout=1.5,
        retry_interval=30.0,
        pool_size=4,
        pool_recycle=300.0,
    )
    assert cfg.lookup == LookupConfig(timeout=2.5)
    assert cfg.server == ServerConfig(max_connections=50, idle_timeout=30.0, max_pipelined=8, shutdown_timeout=2.0)


def test_empty_delimiter_turns_extensions_off(tmp_path: Path) -> None:
    assert load(tmp_path, 'recipient_delimiter = ""').recipient_delimiter == ""


# TOML has nan, and "nan <= 0" is false: the check must refuse it explicitly.
@pytest.mark.parametrize(
    ("section", "key"),
    [pytest.param("lookup", "timeout", id="lookup-timeout"), pytest.param("server", "idle_timeout", id="idle-timeout")],
)
def test_nan_seconds_are_refused(tmp_path: Path, section: str, key: str) -> None:
    path, message = error(tmp_path, f"[{section}]\n{key} = nan")
    assert_names(path, message, f"{section}.{key}", "")


# --------------------------------------------------------------------------- database URLs

PASSWORD = "Hunter2x"

GOOD_URLS = [
    pytest.param(
        "sqlite:///var/lib/mailmapd/mail.db", DatabaseURL("sqlite", path="/var/lib/mailmapd/mail.db"), id="sqlite"
    ),
    pytest.param(
        "mysql://mail:secret@db.example:3307/mail",
        DatabaseURL("mysql", hosts=(HostPort("db.example", 3307),), user="mail", password="secret", database="mail"),
        id="mysql",
    ),
    pytest.param(
        "mysql://mail:secret@db.example/mail",
        DatabaseURL("mysql", hosts=(HostPort("db.example", 3306),), user="mail", password="secret", database="mail"),
        id="default-port",
    ),
    pytest.param(
        "mysql://mail:secret@db1:3306,db2,db3:3307/mail",
        DatabaseURL(
            "mysql",
            hosts=(HostPort("db1", 3306), HostPort("db2", 3306), HostPort("db3", 3307)),
            user="mail",
            password="secret",
            database="mail",
        ),
        id="several-hosts-in-order",
    ),
    pytest.param(
        "mysql://mail:secret@[::1]:3307/mail",
        DatabaseURL("mysql", hosts=(HostPort("::1", 3307),), user="mail", password="secret", database="mail"),
        id="ipv6",
    ),
    pytest.param(
        "mysql://mail:secret@[::1]/mail",
        DatabaseURL("mysql", hosts=(HostPort("::1", 3306),), user="mail", password="secret", database="mail"),
        id="ipv6-default-port",
    ),
    pytest.param(
        "mysql://mail:secret@[2001:db8::10]:3306,db2/mail",
        DatabaseURL(
            "mysql",
            hosts=(HostPort("2001:db8::10", 3306), HostPort("db2", 3306)),
            user="mail",
            password="secret",
            database="mail",
        ),
        id="ipv6-and-name",
    ),
    pytest.param(
        "mysql://mail:secret@/mail?unix_socket=/run/mysqld/mysqld.sock",
        DatabaseURL("mysql", unix_socket="/run/mysqld/mysqld.sock", user="mail", password="secret", database="mail"),
        id="unix-socket",
    ),
    pytest.param(
        "mysql://mail:secret@/mail?unix_socket=%2Frun%2Fmysqld%2Fmysqld.sock",
        DatabaseURL("mysql", unix_socket="/run/mysqld/mysqld.sock", user="mail", password="secret", database="mail"),
        id="unix-socket-escaped",
    ),
    pytest.param(
        "mysql://mail:p%40ss%3Aw%2Frd%25%20x%23@db/mail",
        DatabaseURL("mysql", hosts=(HostPort("db", 3306),), user="mail", password="p@ss:w/rd% x#", database="mail"),
        id="password-escaped",
    ),
    pytest.param(
        "mysql://mail:p@ss@db/mail",
        DatabaseURL("mysql", hosts=(HostPort("db", 3306),), user="mail", password="p@ss", database="mail"),
        id="password-at-split-at-last-at",
    ),
    pytest.param(
        "mysql://mail%2Badmin:pw@db/mail",
        DatabaseURL("mysql", hosts=(HostPort("db", 3306),), user="mail+admin", password="pw", database="mail"),
        id="user-escaped",
    ),
    pytest.param(
        "mysql://mail@db/mail",
        DatabaseURL("mysql", hosts=(HostPort("db", 3306),), user="mail", database="mail"),
        id="no-password",
    ),
    pytest.param("mysql://db/mail", DatabaseURL("mysql", hosts=(HostPort("db", 3306),), database="mail"), id="no-user"),
]


@pytest.mark.parametrize(("url", "expected"), GOOD_URLS)
def test_database_url(tmp_path: Path, url: str, expected: DatabaseURL) -> None:
    assert parse_database_url(url, "database.url") == expected
    assert load(tmp_path, f"[database]\nurl = '{url}'").database.url == expected


BAD_URLS = [
    pytest.param(f"mysql://mail:{PASSWORD}@db", "the URL names no database", id="no-database"),
    pytest.param(f"mysql://mail:{PASSWORD}@db/", "the URL names no database", id="empty-database"),
    pytest.param(f"mysql://mail:{PASSWORD}@/mail", "the URL names no host", id="no-host"),
    pytest.param(
        f"postgresql://mail:{PASSWORD}@db/mail",
        "expected mysql://... or sqlite:///..., got a 'postgresql' URL",
        id="unknown-scheme",
    ),
    pytest.param("", "expected mysql://... or sqlite:///..., got a '' URL", id="empty"),
    pytest.param("sqlite:mail.db", "expected mysql://... or sqlite:///...", id="sqlite-no-slashes"),
    pytest.param("sqlite://mail.db", "sqlite URL needs an absolute path", id="sqlite-relative"),
    pytest.param("sqlite://var/lib/mailmapd/mail.db", "sqlite URL needs an absolute path", id="sqlite-two-slashes"),
    pytest.param(f"mysql://mail:{PASSWORD}@db:0/mail", "bad port '0'", id="port-zero"),
    pytest.param(f"mysql://mail:{PASSWORD}@db:65536/mail", "bad port '65536'", id="port-too-big"),
    pytest.param(f"mysql://mail:{PASSWORD}@db:mysql/mail", "bad port 'mysql'", id="port-name"),
    pytest.param(f"mysql://mail:{PASSWORD}@db:/mail", "bad port ''", id="port-empty"),
    pytest.param(f"mysql://mail:{PASSWORD}@db1,db2:x/mail", "bad port 'x'", id="second-host-port"),
    pytest.param(f"mysql://mail:{PASSWORD}@[::1]:x/mail", "bad port 'x'", id="ipv6-port"),
    pytest.param(
        f"mysql://mail:{PASSWORD}@db/mail?ssl=true",
        "unknown URL parameter 'ssl' (known: unix_socket)",
        id="unknown-parameter",
    ),
    pytest.param(
        f"mysql://mail:{PASSWORD}@/mail?unix_socket=/run/m.sock&charset=utf8",
        "unknown URL parameter 'charset'",
        id="unknown-parameter-after-socket",
    ),
]


@pytest.mark.parametrize(("url", "fragment"), BAD_URLS)
def test_bad_database_url(tmp_path: Path, url: str, fragment: str) -> None:
    path, message = error(tmp_path, f"[database]\nurl = '{url}'")
    assert_names(path, message, "database.url", fragment)
    assert PASSWORD not in message


# A bad [IPv6] host or a port like "3²" (str.isdigit() accepts it, int() does not) must be
# a message naming database.url, never a traceback.
@pytest.mark.parametrize(
    "url",
    [
        pytest.param("mysql://mail:pw@[::1/mail", id="unclosed-bracket"),
        pytest.param("mysql://mail:pw@[db.example]:3306/mail", id="name-in-brackets"),
        pytest.param("mysql://mail:pw@db:3²/mail", id="superscript-port"),
    ],
)
def test_malformed_url_is_a_config_error(tmp_path: Path, url: str) -> None:
    path, message = error(tmp_path, f"[database]\nurl = '{url}'")
    assert_names(path, message, "database.url", "")


# A parameter without "=" is refused like "?ssl=true", never dropped silently.
def test_url_parameter_without_value_is_refused(tmp_path: Path) -> None:
    path, message = error(tmp_path, "[database]\nurl = 'mysql://mail:pw@db/mail?compress'")
    assert_names(path, message, "database.url", "unknown URL parameter 'compress'")


# A password may hold "/", "?", ":" or "@" unescaped: the credentials end at the last "@".
@pytest.mark.parametrize(
    ("url", "password"),
    [
        pytest.param("mysql://mail:Sec/ret9@db.example/mail", "Sec/ret9", id="slash"),
        pytest.param("mysql://mail:12/ab9@db.example/mail", "12/ab9", id="digits-and-slash"),
        pytest.param("mysql://mail:a@b?c:d@db.example/mail", "a@b?c:d", id="at-question-colon"),
    ],
)
def test_unescaped_characters_in_password(tmp_path: Path, url: str, password: str) -> None:
    cfg = load(tmp_path, f"[database]\nurl = '{url}'")
    assert cfg.database.url.password == password
    assert cfg.database.url.hosts == (HostPort("db.example", 3306),)
    assert cfg.database.url.database == "mail"
    assert password not in cfg.database.url.redacted()


REDACTED = [
    pytest.param(
        f"mysql://mail:{PASSWORD}@db1:3306,db2:3307/mail", "mysql://mail:***@db1:3306,db2:3307/mail", id="hosts"
    ),
    pytest.param(f"mysql://mail:{PASSWORD}%2F%40x@db/mail", "mysql://mail:***@db:3306/mail", id="escaped-password"),
    pytest.param(
        f"mysql://mail:{PASSWORD}@/mail?unix_socket=/run/mysqld/mysqld.sock",
        "mysql://mail:***@unix:/run/mysqld/mysqld.sock/mail",
        id="unix-socket",
    ),
    pytest.param("mysql://mail@db/mail", "mysql://mail@db:3306/mail", id="no-password"),
    pytest.param("mysql://db/mail", "mysql://db:3306/mail", id="no-user"),
    pytest.param("sqlite:///var/lib/mailmapd/mail.db", "sqlite:///var/lib/mailmapd/mail.db", id="sqlite"),
]


@pytest.mark.parametrize(("url", "redacted"), REDACTED)
def test_password_is_never_shown(tmp_path: Path, url: str, redacted: str) -> None:
    cfg = load(tmp_path, f"[database]\nurl = '{url}'")
    assert cfg.database.url.redacted() == redacted
    for text in (cfg.database.url.redacted(), repr(cfg.database.url), repr(cfg.database), repr(cfg), str(cfg)):
        assert PASSWORD not in text
    if PASSWORD in url:
        assert cfg.database.url.password.startswith(PASSWORD)


# --------------------------------------------------------------------------- listeners


def listen_toml(*items: str) -> str:
    return "".join(f"[[listen]]\n{item}\n" for item in items)


GOOD_LISTEN = [
    pytest.param(
        'protocol = "socketmap"\naddress = "inet:127.0.0.1:7979"',
        ListenConfig("socketmap", "inet:127.0.0.1:7979"),
        id="socketmap-inet",
    ),
    pytest.param(
        'protocol = "socketmap"\naddress = "inet:[::1]:7979"', ListenConfig("socketmap", "inet:[::1]:7979"), id="ipv6"
    ),
    pytest.param(
        'protocol = "socketmap"\naddress = "inet:127.0.0.1:0"',
        ListenConfig("socketmap", "inet:127.0.0.1:0"),
        id="port-zero-for-tests",
    ),
    pytest.param(
        'protocol = "tcp_table"\naddress = "inet:localhost:7980"\nmap = "aliases"',
        ListenConfig("tcp_table", "inet:localhost:7980", map="aliases"),
        id="tcp-table",
    ),
    pytest.param(
        'protocol = "socketmap"\naddress = "unix:/var/spool/postfix/private/mailmapd"\n'
        'mode = "0660"\nowner = "mailmapd"\ngroup = "postfix"',
        ListenConfig(
            "socketmap", "unix:/var/spool/postfix/private/mailmapd", mode=0o660, owner="mailmapd", group="postfix"
        ),
        id="unix-chrooted-postfix",
    ),
    pytest.param(
        'protocol = "socketmap"\naddress = "unix:/run/m.sock"\nmode = "640"',
        ListenConfig("socketmap", "unix:/run/m.sock", mode=0o640),
        id="mode-without-leading-zero",
    ),
    pytest.param(
        'protocol = "socketmap"\naddress = "unix:/run/m.sock"\nmode = 0o600',
        ListenConfig("socketmap", "unix:/run/m.sock", mode=0o600),
        id="mode-toml-octal",
    ),
    pytest.param(
        'protocol = "tcp_table"\naddress = "unix:/run/m.sock"\nmap = "domains"',
        ListenConfig("tcp_table", "unix:/run/m.sock", map="domains"),
        id="unix-default-mode",
    ),
]


@pytest.mark.parametrize(("item", "expected"), GOOD_LISTEN)
def test_listen(tmp_path: Path, item: str, expected: ListenConfig) -> None:
    assert load(tmp_path, listen_toml(item)).listen == (expected,)


def test_listeners_keep_their_order(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        listen_toml(
            'protocol = "tcp_table"\naddress = "inet:127.0.0.1:7981"\nmap = "transports"',
            'protocol = "socketmap"\naddress = "inet:127.0.0.1:7979"',
            'protocol = "tcp_table"\naddress = "inet:127.0.0.1:7980"\nmap = "domains"',
        ),
    )
    assert [(lc.protocol, lc.address, lc.map) for lc in cfg.listen] == [
        ("tcp_table", "inet:127.0.0.1:7981", "transports"),
        ("socketmap", "inet:127.0.0.1:7979", None),
        ("tcp_table", "inet:127.0.0.1:7980", "domains"),
    ]


SM = 'protocol = "socketmap"\n'
UNIX = 'protocol = "socketmap"\naddress = "unix:/run/m.sock"\n'

BAD_LISTEN = [
    pytest.param(
        ['protocol = "tcp_table"\naddress = "inet:127.0.0.1:7980"'],
        "listen[0].map",
        "required for tcp_table",
        id="tcp-table-without-map",
    ),
    pytest.param(
        ['protocol = "tcp_table"\naddress = "inet:127.0.0.1:7980"\nmap = "users"'],
        "listen[0].map",
        "unknown map 'users'",
        id="tcp-table-unknown-map",
    ),
    pytest.param(
        [SM + 'address = "inet:127.0.0.1:7979"\nmap = "domains"'],
        "listen[0].map",
        "only tcp_table listeners take a map",
        id="map-on-socketmap",
    ),
    pytest.param(
        ['protocol = "http"\naddress = "inet:127.0.0.1:7979"'],
        "listen[0].protocol",
        "must be one of",
        id="unknown-protocol",
    ),
    pytest.param(
        ['protocol = "Socketmap"\naddress = "inet:127.0.0.1:7979"'],
        "listen[0].protocol",
        "must be one of",
        id="protocol-case",
    ),
    pytest.param(
        [SM + 'address = "inet:127.0.0.1:7979"', 'protocol = "tcp_table"\naddress = "inet:127.0.0.1:7979"\nmap = "x"'],
        "listen[1].map",
        "unknown map 'x'",
        id="index-of-second-listener",
    ),
    pytest.param(
        [
            SM + 'address = "inet:127.0.0.1:7979"',
            'protocol = "tcp_table"\naddress = "inet:127.0.0.1:7979"\nmap = "domains"',
        ],
        "listen",
        "address inet:127.0.0.1:7979 is used twice",
        id="duplicate-inet",
    ),
    pytest.param(
        [UNIX, UNIX],
        "listen",
        "address unix:/run/m.sock is used twice",
        id="duplicate-unix",
    ),
    pytest.param([SM + 'address = "inet:127.0.0.1"'], "listen[0].address", "expected inet:HOST:PORT", id="no-port"),
    pytest.param([SM + 'address = "inet::7979"'], "listen[0].address", "expected inet:HOST:PORT", id="no-host"),
    pytest.param([SM + 'address = "inet:[]:7979"'], "listen[0].address", "expected inet:HOST:PORT", id="empty-ipv6"),
    pytest.param([SM + 'address = "inet:127.0.0.1:"'], "listen[0].address", "expected inet:HOST:PORT", id="empty-port"),
    pytest.param(
        [SM + 'address = "inet:127.0.0.1:65536"'], "listen[0].address", "expected inet:HOST:PORT", id="port-too-big"
    ),
    pytest.param(
        [SM + 'address = "inet:127.0.0.1:smtp"'], "listen[0].address", "expected inet:HOST:PORT", id="port-name"
    ),
    pytest.param(
        [SM + 'address = "127.0.0.1:7979"'],
        "listen[0].address",
        "expected inet:HOST:PORT or unix:/PATH, got '127.0.0.1:7979'",
        id="no-prefix",
    ),
    pytest.param(
        [SM + 'address = "tcp:127.0.0.1:7979"'],
        "listen[0].address",
        "expected inet:HOST:PORT or unix:/PATH",
        id="tcp-prefix",
    ),
    pytest.param(
        [SM + 'address = "unix:private/mailmapd"'],
        "listen[0].address",
        "unix socket path must be absolute",
        id="unix-relative",
    ),
    pytest.param([SM + 'address = "unix:"'], "listen[0].address", "unix socket path must be absolute", id="unix-empty"),
    pytest.param(
        [UNIX + 'mode = "0999"'], "listen[0].mode", 'expected an octal string like "0660"', id="mode-not-octal"
    ),
    pytest.param(
        [UNIX + 'mode = "rw-rw----"'], "listen[0].mode", 'expected an octal string like "0660"', id="mode-symbolic"
    ),
    pytest.param([UNIX + 'mode = ""'], "listen[0].mode", 'expected an octal string like "0660"', id="mode-empty"),
    pytest.param([UNIX + 'mode = "1777"'], "listen[0].mode", 'expected an octal string like "0660"', id="mode-sticky"),
    pytest.param([UNIX + "mode = 0o1000"], "listen[0].mode", 'expected an octal string like "0660"', id="mode-too-big"),
    pytest.param([UNIX + "mode = -1"], "listen[0].mode", 'expected an octal string like "0660"', id="mode-negative"),
    pytest.param([UNIX + "mode = true"], "listen[0].mode", 'expected an octal string like "0660"', id="mode-bool"),
    pytest.param([UNIX + "mode = 6.6"], "listen[0].mode", 'expected an octal string like "0660"', id="mode-float"),
    pytest.param(
        [SM + 'address = "inet:127.0.0.1:7979"\nmode = "0660"'],
        "listen[0]",
        "mode, owner and group apply to unix: addresses only",
        id="mode-on-inet",
    ),
    pytest.param(
        [SM + 'address = "inet:127.0.0.1:7979"\nowner = "mailmapd"'],
        "listen[0]",
        "mode, owner and group apply to unix: addresses only",
        id="owner-on-inet",
    ),
    pytest.param(
        [SM + 'address = "inet:127.0.0.1:7979"\ngroup = "postfix"'],
        "listen[0]",
        "mode, owner and group apply to unix: addresses only",
        id="group-on-inet",
    ),
]


@pytest.mark.parametrize(("items", "key", "fragment"), BAD_LISTEN)
def test_bad_listen(tmp_path: Path, items: list[str], key: str, fragment: str) -> None:
    path, message = error(tmp_path, listen_toml(*items))
    assert_names(path, message, key, fragment)


# A [[listen]] without protocol or address names the missing key (no TypeError traceback).
@pytest.mark.parametrize(
    ("item", "key"),
    [
        pytest.param('address = "inet:127.0.0.1:7979"', "listen[0].protocol", id="no-protocol"),
        pytest.param('protocol = "socketmap"', "listen[0].address", id="no-address"),
    ],
)
def test_listen_missing_required_key(tmp_path: Path, item: str, key: str) -> None:
    path, message = error(tmp_path, listen_toml(item))
    assert_names(path, message, key, "")


# --------------------------------------------------------------------------- maps


def test_custom_query(tmp_path: Path) -> None:
    query = "SELECT goto FROM alias WHERE address='%s' AND active = '1'"
    cfg = load(tmp_path, f'[maps.forwardings]\nquery = "{query}"')
    assert cfg.maps == {"forwardings": MapConfig(query=query)}
    assert cfg.query_for("forwardings") == query
    assert cfg.query_for("email2email") == SEED_QUERIES["email2email"]


def test_propagate_extension(tmp_path: Path) -> None:
    cfg = load(tmp_path, "[maps.aliases]\npropagate_extension = false")
    assert cfg.map_config("aliases").propagate_extension is False
    assert Config().map_config("aliases").propagate_extension is True


BAD_MAPS = [
    pytest.param(
        '[maps.users]\nquery = "SELECT 1"',
        "maps.users",
        "unknown map (known: domains, mailboxes, aliases, transports, quota, forwardings, email2email)",
        id="unknown-map",
    ),
    pytest.param(
        "[maps.domains]\nquery = \"SELECT domain FROM domains WHERE domain='%x'\"",
        "maps.domains.query",
        "invalid expansion '%x' at offset 41",
        id="bad-expansion",
    ),
    pytest.param(
        "[maps.quota]\nquery = \"SELECT quota FROM users WHERE email='%s' AND x > 5%\"",
        "maps.quota.query",
        "invalid expansion '%' at offset 50",
        id="trailing-percent",
    ),
    pytest.param(
        '[maps.transports]\nquery = "SELECT transport FROM transport WHERE domain=\'%s"',
        "maps.transports.query",
        "unterminated ' string starting at offset 45",
        id="unterminated-quote",
    ),
    pytest.param(
        "[maps.aliases]\nquery = \"SELECT destination FROM forwardings WHERE source='%s'\"",
        "maps.aliases.query",
        "aliases has no query of its own; set maps.forwardings.query and maps.email2email.query",
        id="aliases-query-refused",
    ),
]


@pytest.mark.parametrize(("text", "key", "fragment"), BAD_MAPS)
def test_bad_maps(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    path, message = error(tmp_path, text)
    assert_names(path, message, key, fragment)


# --------------------------------------------------------------------------- the CLI


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """main() reconfigures the root logger (basicConfig(force=True)); put pytest's back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restore_logging")
def test_check_config_on_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(EXAMPLE), "check-config"]) == os.EX_OK
    out, err = capsys.readouterr()
    assert out == (
        f"{EXAMPLE}: OK (database sqlite:///var/lib/mailmapd/mail.db; "
        "socketmap on inet:127.0.0.1:7979, tcp_table on inet:127.0.0.1:7980)\n"
    )
    assert err == ""


@pytest.mark.usefixtures("restore_logging")
def test_check_config_without_listeners(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "")
    assert main(["-c", str(path), "check-config"]) == os.EX_OK
    assert capsys.readouterr().out == f"{path}: OK (database sqlite:///var/lib/mailmapd/mail.db; no listeners)\n"


@pytest.mark.usefixtures("restore_logging")
def test_check_config_reads_the_file_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No database is opened: a MySQL host nobody listens on is still a valid file."""
    path = write(tmp_path, f"[database]\nurl = 'mysql://mail:{PASSWORD}@127.0.0.1:1/mail'\n" + SOCKETMAP)
    assert main(["-c", str(path), "check-config"]) == os.EX_OK
    out = capsys.readouterr().out
    assert out == (f"{path}: OK (database mysql://mail:***@127.0.0.1:1/mail; socketmap on inet:127.0.0.1:7979)\n")
    assert PASSWORD not in out


@pytest.mark.usefixtures("restore_logging")
def test_check_config_uses_mailmapd_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, SOCKETMAP)
    monkeypatch.setenv("MAILMAPD_CONFIG", str(path))
    assert main(["check-config"]) == os.EX_OK
    assert capsys.readouterr().out.startswith(f"{path}: OK ")


@pytest.mark.parametrize(
    ("text", "key_message"),
    [
        pytest.param("[database]\npool_szie = 5", "database.pool_szie: unknown key", id="unknown-key"),
        pytest.param(
            SOCKETMAP + '[[listen]]\nprotocol = "tcp_table"\naddress = "inet:127.0.0.1:7980"',
            "listen[1].map: required for tcp_table (the protocol carries no map name)",
            id="listen",
        ),
        pytest.param('[server]\nmax_connections = "many"', "server.max_connections: expected an integer", id="type"),
    ],
)
@pytest.mark.usefixtures("restore_logging")
def test_check_config_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, key_message: str) -> None:
    path = write(tmp_path, text)
    assert main(["--config", str(path), "check-config"]) == os.EX_CONFIG == 78
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"mailmapd: {path}: {key_message}\n"


@pytest.mark.usefixtures("restore_logging")
def test_check_config_not_toml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "[database\n")
    assert main(["--config", str(path), "check-config"]) == os.EX_CONFIG
    assert capsys.readouterr().err.startswith(f"mailmapd: {path}: not valid TOML: ")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"mailmapd {mailmapd.__version__}\n"
    assert mailmapd.__version__ == importlib.metadata.version("mailmapd")
