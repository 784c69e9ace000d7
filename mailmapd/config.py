"""The configuration file: TOML parsed once into frozen, typed sections.

Every key has its default in its field. An unknown key, a value of the wrong type or an
impossible value raises ConfigError naming the file and the key's dotted path.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import unquote

from mailmapd.sqltemplate import QueryTemplate, TemplateError

DEFAULT_CONFIG_PATH = "/etc/mailmapd/mailmapd.toml"
DEFAULT_DATABASE_URL = "sqlite:///var/lib/mailmapd/mail.db"

Protocol = Literal["socketmap", "tcp_table", "policy"]
PROTOCOLS: tuple[str, ...] = typing.get_args(Protocol)

# The maps mailmapd serves; see docs/maps.md. The Postfix-facing maps perform their
# main.cf parameter's search order; forwardings and email2email answer the exact key.
MAP_NAMES: tuple[str, ...] = (
    "domains",
    "mailboxes",
    "aliases",
    "transports",
    "quota",
    "forwardings",
    "email2email",
)

# The seed's six queries (mysql-virtual_*.cf), unchanged.
SEED_QUERIES: dict[str, str] = {
    "domains": "SELECT domain AS virtual FROM domains WHERE domain='%s'",
    "forwardings": "SELECT destination FROM forwardings WHERE source='%s'",
    "mailboxes": (
        "SELECT CONCAT(SUBSTRING_INDEX(email,'@',-1),'/',SUBSTRING_INDEX(email,'@',1),'/') FROM users WHERE email='%s'"
    ),
    "email2email": "SELECT email FROM users WHERE email='%s'",
    "transports": "SELECT transport FROM transport WHERE domain='%s'",
    "quota": "SELECT quota FROM users WHERE email='%s'",
}


_T = TypeVar("_T")
_SECTIONS = frozenset({"database", "lookup", "cache", "quota", "metrics", "server", "listen", "maps"})
# A policy action that refuses: a 4XX or 5XX code, its enhanced status code, and text.
_REJECT_ACTION = re.compile(r"[45]\d\d [45]\.\d{1,3}\.\d{1,3} \S.*")
_MAX_PORT = 65535
_MAX_MODE = 0o777


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file and the key."""


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class DatabaseURL:
    """A parsed ``database.url``: ``mysql://user:pw@h1:3306,h2/db`` or ``sqlite:///path``."""

    scheme: Literal["mysql", "sqlite"]
    hosts: tuple[HostPort, ...] = ()
    unix_socket: str | None = None
    user: str = ""
    password: str = field(default="", repr=False)
    database: str = ""
    path: str = ""

    def redacted(self) -> str:
        """The URL with the password replaced, for logs and error messages."""
        if self.scheme == "sqlite":
            return f"sqlite://{self.path}"
        where = ",".join(f"[{h.host}]:{h.port}" if ":" in h.host else f"{h.host}:{h.port}" for h in self.hosts)
        where = where or f"unix:{self.unix_socket}"
        auth = f"{self.user}:***@" if self.password else (f"{self.user}@" if self.user else "")
        return f"mysql://{auth}{where}/{self.database}"


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    url: DatabaseURL = field(default_factory=lambda: parse_database_url(DEFAULT_DATABASE_URL, "database.url"))
    # Seconds to establish one connection to one host before trying the next.
    connect_timeout: float = 3.0
    # Seconds a failed host is skipped (mysql_table(5) retry_interval).
    retry_interval: float = 60.0
    # Connections each query keeps per host (MySQL only).
    pool_size: int = 5
    # Seconds after which an idle pooled connection is replaced; keep it under the
    # server's wait_timeout (28800 s by default) so a dropped connection is never used.
    pool_recycle: float = 600.0


@dataclass(frozen=True, slots=True)
class ListenConfig:
    protocol: Protocol
    address: str
    map: str | None = None
    mode: int | None = None
    owner: str | None = None
    group: str | None = None


@dataclass(frozen=True, slots=True)
class MapConfig:
    # mysql_table(5)-style query; None means the seed's query (aliases has none:
    # it combines forwardings and email2email).
    query: str | None = None
    # Per-map cache TTLs in seconds; None means [cache] positive_ttl / negative_ttl.
    positive_ttl: float | None = None
    negative_ttl: float | None = None
    # aliases only: carry an unmatched +extension onto each result address, as
    # Postfix's propagate_unmatched_extensions (default includes "virtual") does.
    propagate_extension: bool = True


@dataclass(frozen=True, slots=True)
class LookupConfig:
    # Seconds one lookup may take, its whole search order included, before it answers
    # TEMP. Postfix waits 100 s; answering well before keeps its processes moving.
    timeout: float = 5.0
    # Send a search order as one statement (maps.py, Queries); false: one query per key, as
    # Postfix does.
    combine_queries: bool = True


@dataclass(frozen=True, slots=True)
class CacheConfig:
    # Seconds a found answer is reused without asking the database.
    positive_ttl: float = 60.0
    # Seconds a "not found" answer is reused (short: a new user should not wait long).
    negative_ttl: float = 10.0
    # Entries kept at most; past it the less recently used half goes (mailmapd.cache).
    max_entries: int = 1_000_000
    # Seconds past its TTL an answer may still be served while the database fails;
    # 0 turns serving stale answers off.
    max_stale: float = 60.0
    # Seconds between checks of the change counters that mailmapd's triggers keep
    # (table mailmapd_changes); a change flushes the maps built on that table. 0 = off.
    poll_interval: float = 5.0


@dataclass(frozen=True, slots=True)
class QuotaConfig:
    # virtual_mailbox_base: the mailboxes map's values are relative to it.
    mailbox_base: str = "/home/vmail"
    # The policy action for a recipient over quota (the seed's text; "452 4.2.2 ..." makes
    # senders retry instead of bouncing).
    reject: str = "552 5.2.2 The user you are trying to reach is over quota."
    # Seconds a mailbox's measured usage is reused.
    usage_cache_ttl: float = 10.0
    # Seconds one policy decision may take before it answers DEFER_IF_PERMIT.
    timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    # Where Prometheus scrapes /metrics: inet:HOST:PORT; "" turns the exporter off.
    address: str = "inet:127.0.0.1:9779"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    # Connections beyond this are closed at once (Postfix retries).
    max_connections: int = 1000
    # Seconds a connection may stay silent before it is closed. Postfix closes its own
    # idle socketmap connections after 10 s and policy connections after 300 s.
    idle_timeout: float = 600.0
    # Requests read ahead of the one being answered before reading pauses.
    max_pipelined: int = 64
    # Seconds SIGTERM waits for requests in flight before closing connections.
    shutdown_timeout: float = 10.0
    # The unix socket `mailmapd flush` talks to; "" turns it off. Mode 0600: only the
    # daemon's user (and root) may use it.
    control_socket: str = "/run/mailmapd/control.sock"
    # The event loop `mailmapd serve` runs on: "auto" is uvloop when it is installed, else
    # asyncio's own; "uvloop" requires it; "asyncio" never uses it.
    event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"


@dataclass(frozen=True, slots=True)
class Config:
    path: str = "<defaults>"
    recipient_delimiter: str = "+"
    log_level: str = "info"
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    lookup: LookupConfig = field(default_factory=LookupConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    quota: QuotaConfig = field(default_factory=QuotaConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    listen: tuple[ListenConfig, ...] = ()
    maps: dict[str, MapConfig] = field(default_factory=dict)

    def map_config(self, name: str) -> MapConfig:
        return self.maps.get(name, MapConfig())

    def ttls(self, name: str) -> tuple[float, float]:
        """(positive, negative) cache TTLs of one map."""
        mc = self.map_config(name)
        positive = self.cache.positive_ttl if mc.positive_ttl is None else mc.positive_ttl
        negative = self.cache.negative_ttl if mc.negative_ttl is None else mc.negative_ttl
        return positive, negative

    def query_for(self, name: str) -> str:
        """The query text of a map backed by one query (everything but aliases)."""
        return self.map_config(name).query or SEED_QUERIES[name]


# --------------------------------------------------------------------------- parsing


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a configuration file."""
    name = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read: {exc.strerror}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{name}: not valid TOML: {exc}") from exc
    return parse_config(data, name)


def parse_config(data: dict[str, Any], name: str = "<config>") -> Config:
    """Build a Config from parsed TOML; errors name ``name`` and the key."""
    try:
        return _parse(data, name)
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _parse(data: dict[str, Any], name: str) -> Config:
    _check_keys(data, {f.name for f in dataclasses.fields(Config)} - {"path"}, "")
    top = {k: v for k, v in data.items() if k not in _SECTIONS}
    cfg = _build(Config, top, "")
    delimiter = cfg.recipient_delimiter
    if any(c.isspace() or c == "@" for c in delimiter):
        raise ConfigError("recipient_delimiter: must not contain whitespace or '@'")
    if cfg.log_level not in {"debug", "info", "warning", "error"}:
        raise ConfigError("log_level: must be one of debug, info, warning, error")

    db_raw = _table(data.get("database", {}), "database")
    url_text = db_raw.pop("url", DEFAULT_DATABASE_URL)
    if not isinstance(url_text, str):
        raise ConfigError("database.url: expected a string")
    database = _build(DatabaseConfig, db_raw, "database.")
    database = dataclasses.replace(database, url=parse_database_url(url_text, "database.url"))
    _positive(database.connect_timeout, "database.connect_timeout")
    _positive(database.pool_size, "database.pool_size")
    _not_negative(database.retry_interval, "database.retry_interval")
    _positive(database.pool_recycle, "database.pool_recycle")

    lookup = _build(LookupConfig, _table(data.get("lookup", {}), "lookup"), "lookup.")
    _positive(lookup.timeout, "lookup.timeout")
    cache = _build(CacheConfig, _table(data.get("cache", {}), "cache"), "cache.")
    _not_negative(cache.positive_ttl, "cache.positive_ttl")
    _not_negative(cache.negative_ttl, "cache.negative_ttl")
    _positive(cache.max_entries, "cache.max_entries")
    _not_negative(cache.max_stale, "cache.max_stale")
    _not_negative(cache.poll_interval, "cache.poll_interval")
    quota = _build(QuotaConfig, _table(data.get("quota", {}), "quota"), "quota.")
    if not quota.mailbox_base.startswith("/"):
        raise ConfigError("quota.mailbox_base: must be an absolute path (virtual_mailbox_base)")
    if not _REJECT_ACTION.fullmatch(quota.reject) or "\n" in quota.reject:
        raise ConfigError('quota.reject: expected "4XX 4.X.X text" or "5XX 5.X.X text"')
    _not_negative(quota.usage_cache_ttl, "quota.usage_cache_ttl")
    _positive(quota.timeout, "quota.timeout")
    metrics = _build(MetricsConfig, _table(data.get("metrics", {}), "metrics"), "metrics.")
    if metrics.address and not isinstance(parse_address(metrics.address, "metrics.address"), InetAddress):
        raise ConfigError("metrics.address: expected inet:HOST:PORT (Prometheus scrapes over HTTP)")
    server = _build(ServerConfig, _table(data.get("server", {}), "server"), "server.")
    if server.control_socket and not server.control_socket.startswith("/"):
        raise ConfigError('server.control_socket: must be an absolute path, or "" for none')
    _positive(server.max_connections, "server.max_connections")
    _positive(server.idle_timeout, "server.idle_timeout")
    _positive(server.max_pipelined, "server.max_pipelined")
    _not_negative(server.shutdown_timeout, "server.shutdown_timeout")
    if server.event_loop == "uvloop" and not _importable("uvloop"):
        raise ConfigError('server.event_loop: "uvloop" is not installed (pip install uvloop); use "auto" or "asyncio"')

    maps: dict[str, MapConfig] = {}
    for map_name, section in _table(data.get("maps", {}), "maps").items():
        where = f"maps.{map_name}"
        if map_name not in MAP_NAMES:
            raise ConfigError(f"{where}: unknown map (known: {', '.join(MAP_NAMES)})")
        table = _table(section, where)
        if "propagate_extension" in table and map_name != "aliases":
            raise ConfigError(f"{where}.propagate_extension: applies to maps.aliases only")
        mc = _build(MapConfig, table, where + ".")
        for ttl_key in ("positive_ttl", "negative_ttl"):
            value = getattr(mc, ttl_key)
            if value is not None:
                _not_negative(value, f"{where}.{ttl_key}")
        if mc.query is not None:
            if map_name == "aliases":
                raise ConfigError(
                    "maps.aliases.query: aliases has no query of its own; "
                    "set maps.forwardings.query and maps.email2email.query"
                )
            try:
                QueryTemplate.parse(mc.query)
            except TemplateError as exc:
                raise ConfigError(f"{where}.query: {exc}") from None
        maps[map_name] = mc

    listen_raw = data.get("listen", [])
    if not isinstance(listen_raw, list):
        raise ConfigError("listen: expected an array of tables ([[listen]])")
    listeners = tuple(_parse_listen(item, i) for i, item in enumerate(listen_raw))
    seen: set[str] = set()
    for lc in listeners:
        if lc.address in seen:
            raise ConfigError(f"listen: address {lc.address} is used twice")
        seen.add(lc.address)

    return dataclasses.replace(
        cfg,
        path=name,
        database=database,
        lookup=lookup,
        cache=cache,
        quota=quota,
        metrics=metrics,
        server=server,
        listen=listeners,
        maps=maps,
    )


def _parse_listen(item: object, index: int) -> ListenConfig:
    where = f"listen[{index}]"
    raw = _table(item, where)
    mode = raw.pop("mode", None)
    lc = _build(ListenConfig, raw, where + ".")
    if lc.protocol not in PROTOCOLS:
        raise ConfigError(f"{where}.protocol: must be one of {', '.join(PROTOCOLS)}")
    parse_address(lc.address, f"{where}.address")
    if lc.protocol == "tcp_table":
        if lc.map is None:
            raise ConfigError(f"{where}.map: required for tcp_table (the protocol carries no map name)")
        if lc.map not in MAP_NAMES:
            raise ConfigError(f"{where}.map: unknown map {lc.map!r}")
    elif lc.map is not None:
        raise ConfigError(f"{where}.map: only tcp_table listeners take a map")
    if mode is not None:
        # An octal string ("0660"), or a TOML octal integer (0o660).
        try:
            mode = int(mode, 8) if isinstance(mode, str) else mode
        except ValueError:
            mode = -1
        if not isinstance(mode, int) or isinstance(mode, bool):
            mode = -1
        if not 0 <= mode <= _MAX_MODE:
            raise ConfigError(f'{where}.mode: expected an octal string like "0660"')
    if (mode is not None or lc.owner or lc.group) and not lc.address.startswith("unix:"):
        raise ConfigError(f"{where}: mode, owner and group apply to unix: addresses only")
    return dataclasses.replace(lc, mode=mode)


@dataclass(frozen=True, slots=True)
class InetAddress:
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class UnixAddress:
    path: str


def parse_address(text: str, where: str) -> InetAddress | UnixAddress:
    """``inet:host:port``, ``inet:[::1]:port`` or ``unix:/path``."""
    if text.startswith("unix:"):
        path = text[5:]
        if not path.startswith("/"):
            raise ConfigError(f"{where}: unix socket path must be absolute: {text!r}")
        return UnixAddress(path)
    if text.startswith("inet:"):
        rest = text[5:]
        host, sep, port_text = rest.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= _MAX_PORT:
            raise ConfigError(f"{where}: expected inet:HOST:PORT, got {text!r}")
        return InetAddress(host, int(port_text))
    raise ConfigError(f"{where}: expected inet:HOST:PORT or unix:/PATH, got {text!r}")


def parse_database_url(text: str, where: str) -> DatabaseURL:
    """Parse ``database.url``; errors name ``where`` and never show the password."""
    if text.startswith("sqlite://"):
        path = text[len("sqlite://") :]
        if not path.startswith("/"):
            raise ConfigError(f"{where}: sqlite URL needs an absolute path: sqlite:///var/lib/...")
        return DatabaseURL("sqlite", path=path)
    if not text.startswith("mysql://"):
        raise ConfigError(f"{where}: expected mysql://... or sqlite:///..., got a {text.split(':', 1)[0]!r} URL")
    rest = text[len("mysql://") :]
    # The credentials end at the LAST "@": a password may hold "/", "?", ":" or "@" unescaped.
    userinfo, at, location = rest.rpartition("@")
    user, _, password = userinfo.partition(":")
    if not at:
        location = rest
    location, _, query_text = location.partition("?")
    hostlist, slash, db_path = location.partition("/")
    database = unquote(db_path)
    if not slash or not database or "/" in database:
        raise ConfigError(f"{where}: the URL names no database (mysql://user:pw@host/DBNAME)")
    params: dict[str, str] = {}
    for item in filter(None, query_text.split("&")):
        name, eq, value = item.partition("=")
        if not eq or name != "unix_socket":
            raise ConfigError(f"{where}: unknown URL parameter {name!r} (known: unix_socket)")
        params[name] = unquote(value)
    unix_socket = params.get("unix_socket")
    hosts = tuple(_host(item, where) for item in hostlist.split(",") if item)
    if not hosts and unix_socket is None:
        raise ConfigError(f"{where}: the URL names no host")
    return DatabaseURL(
        "mysql",
        hosts=hosts,
        unix_socket=unix_socket,
        user=unquote(user),
        password=unquote(password),
        database=database,
    )


def _host(item: str, where: str) -> HostPort:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``."""
    if item.startswith("["):
        host, bracket, rest = item[1:].partition("]")
        if not bracket or ":" not in host:
            raise ConfigError(f"{where}: brackets hold an IPv6 address: [::1]:3306")
        if rest and not rest.startswith(":"):
            raise ConfigError(f"{where}: expected [IPv6]:PORT")
        return HostPort(host, _port(rest[1:], where) if rest else 3306)
    host, colon, port = item.partition(":")
    if not host or ":" in port or "/" in host:
        raise ConfigError(f"{where}: cannot read host {item[:64]!r}: write host:port, or [IPv6]:port")
    return HostPort(host, _port(port, where) if colon else 3306)


def _port(text: str, where: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) <= _MAX_PORT:
        raise ConfigError(f"{where}: bad port {text!r}")
    return int(text)


# --------------------------------------------------------------------------- helpers


def _table(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a table")
    return dict(value)


def _check_keys(data: dict[str, Any], known: set[str], prefix: str) -> None:
    for key in data:
        if key not in known:
            raise ConfigError(f"{prefix}{key}: unknown key")


def _build(cls: type[_T], data: dict[str, Any], prefix: str) -> _T:
    """Instantiate a config dataclass from a table, checking names, types and required keys."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"{prefix}{key}: unknown key")
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and name not in kwargs:
            raise ConfigError(f"{prefix}{name}: required key is missing")
    return cls(**kwargs)


def _coerce(value: object, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is Literal:
        if value not in typing.get_args(hint):
            allowed = ", ".join(str(a) for a in typing.get_args(hint))
            raise ConfigError(f"{where}: must be one of {allowed}")
        return value
    if origin in (types.UnionType, typing.Union):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, options[0], where)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number of seconds")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string")
        return value
    raise ConfigError(f"{where}: unsupported value")  # pragma: no cover - a config field type we forgot


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _positive(value: float, where: str) -> None:
    if not (value > 0 and math.isfinite(value)):  # "not >" also refuses nan
        raise ConfigError(f"{where}: must be greater than zero")


def _not_negative(value: float, where: str) -> None:
    if not (value >= 0 and math.isfinite(value)):
        raise ConfigError(f"{where}: must be zero or more")
