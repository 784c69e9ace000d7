"""The maps Postfix asks, each performing its main.cf parameter's search order.

Postfix sends a socketmap or tcp_table server only the full key, never the shorter keys it
would try against a mysql: table (reference/postfix-lookups.md section 6), so each map does
that search itself:

=============  ==========================  ============================================
map            main.cf parameter           keys tried, in order
=============  ==========================  ============================================
domains        virtual_mailbox_domains     the domain
mailboxes      virtual_mailbox_maps        user+ext@domain, user@domain, @domain
quota          virtual_mailbox_limit_maps  as mailboxes
aliases        virtual_alias_maps          as mailboxes; at each key forwardings, then
                                           email2email (Postfix tries every table with one
                                           key before the next key)
transports     transport_maps              user+ext@domain, user@domain, domain,
                                           .parent domains, ``*``
forwardings    (the seed's raw query)      the key
email2email    (the seed's raw query)      the key
=============  ==========================  ============================================

The whole search goes to the database as one statement per template (``Queries``). Values are assembled
as mysql_table(5) does: every column of every row, joined by "," with no space, NULL and ''
skipped; nothing left means not found.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from mailmapd.backends import BackendError
from mailmapd.sqltemplate import CompiledQuery, QueryTemplate

if TYPE_CHECKING:
    from mailmapd.backends import Backend, Row
    from mailmapd.config import Config

log = logging.getLogger(__name__)

_MAX_LABELS = 127

# Local parts Postfix never splits at the recipient delimiter (src/global/split_addr.c).
_UNSPLIT = frozenset({"postmaster", "mailer-daemon", "double-bounce"})


@dataclass(frozen=True, slots=True)
class Variant:
    """One key of a search order, and the extension to carry onto results found with it."""

    key: str
    extension: str | None = None


def split_extension(local: str, delimiters: str) -> tuple[str, str] | None:
    """``("user", "+ext")`` for ``user+ext``, or None when Postfix would not split.

    split_addr(): split at the first delimiter character, never when the local part would
    become empty, never for postmaster, mailer-daemon or double-bounce, and (when "-" is a
    delimiter) never for owner-* or *-request (owner_request_special).
    """
    if not delimiters or local.lower() in _UNSPLIT:
        return None
    if "-" in delimiters:
        lowered = local.lower()
        if lowered.startswith("owner-") or (len(lowered) > len("-request") and lowered.endswith("-request")):
            return None
    for i, ch in enumerate(local):
        if ch in delimiters:
            if i == 0:
                return None
            return local[:i], local[i:]
    return None


def address_variants(key: str, delimiters: str) -> list[Variant]:
    """virtual(5)'s order for a virtual domain: user+ext@domain, user@domain, @domain.

    (mail_addr_find() also tries bare ``user+ext`` and ``user``, but only for domains in
    $mydestination or $myorigin, which a virtual mailbox domain never is.)
    """
    at = key.rfind("@")
    local, domain = (key[:at], key[at:]) if at >= 0 else (key, "")
    variants = [Variant(key)]
    split = split_extension(local, delimiters)
    if split is not None:
        variants.append(Variant(split[0] + domain, split[1]))
    if at >= 0 and key != domain:
        variants.append(Variant(domain))
    return variants


def transport_variants(key: str, delimiters: str) -> list[str]:
    """transport(5)'s order: address, address without extension, domain, .parents, ``*``.

    Parent domains keep their leading dot, as with parent_domain_matches_subdomains left at
    its default (transport_maps not listed).
    """
    at = key.rfind("@")
    keys: list[str] = []
    if at >= 0:
        keys.extend(v.key for v in address_variants(key, delimiters) if not v.key.startswith("@"))
    name = key[at + 1 :]
    # A domain name has at most 127 labels (RFC 1035: 255 octets); a longer key names none
    # of them, and walking every "parent" of a 10,000-byte key would cost thousands of queries.
    for _ in range(_MAX_LABELS):
        if not name:
            break
        keys.append(name)
        dot = name.find(".", 1)
        if dot < 0:
            break
        name = name[dot:]
    keys.append("*")
    return list(dict.fromkeys(keys))  # a key that is itself a domain or "*" is asked once


def join_rows(rows: Sequence[Row]) -> str | None:
    """mysql_table(5)'s result: every column of every row, "," between, NULL and '' skipped."""
    values = [text for row in rows for cell in row if (text := _text(cell))]
    return ",".join(values) if values else None


def _text(cell: Any) -> str:
    if cell is None:
        return ""
    if isinstance(cell, bytes | bytearray):
        return bytes(cell).decode("utf-8", "replace")
    return str(cell)


def add_extension(value: str, extension: str) -> str:
    """Insert ``+ext`` before the last ``@`` of every address in an alias result.

    This is what propagate_unmatched_extensions does to the addresses a user@domain entry
    expands to when the lookup key was user+ext@domain (src/global/mail_addr_map.c).
    """
    out: list[str] = []
    for raw in value.split(","):
        address = raw.strip()
        if not address:
            continue
        at = address.rfind("@")
        out.append(address + extension if at < 0 else address[:at] + extension + address[at:])
    return ",".join(out)


def fold(key: str) -> str:
    """Postfix's folding of keys for its own tables (casefold_utf8 with smtputf8_enable).

    Each key of a search order is folded just before its query; the search order itself is
    derived from the key as sent, so a propagated +Extension keeps its case, as in Postfix.
    """
    return key.casefold()


class Map(Protocol):
    async def lookup(self, key: str) -> str | None:
        """The value for a key exactly as Postfix sent it; raise BackendError on failure."""
        ...


class Source(Protocol):
    """Where a map's values come from: its queries on a backend (or a fake in unit tests)."""

    async def first(self, asks: Sequence[tuple[int, str]]) -> tuple[int, str] | None:
        """Ask each (query number, key) in order; the position and value of the first with a value."""
        ...


Part = tuple[int, str, tuple[str, ...]]  # (position in the search, SQL, bound parameters)


class Queries:
    """A map's query templates on one backend, asked together: a search in one round trip.

    Postfix sends one query per key of a search order, and waits for each answer before the
    next. The same search here is one statement per template: each key becomes a derived
    table tagged with its position, the parts joined by UNION ALL (``combine``), and the
    answer is the first position whose rows leave a value. ``aliases``, with two templates,
    sends its two statements at once. The database evaluates every part; the lookup waits
    for one round trip instead of one per key. Parts of different templates never share a
    statement: UNION ALL would give their columns one type, and change values.

    One query per key, as Postfix does, with ``lookup.combine_queries = false``; for a map
    with a template that has ORDER BY (MariaDB drops an ORDER BY without LIMIT inside a
    derived table); and for a non-ASCII key (a column that cannot hold its characters fails
    the statement it is in, "illegal mix of collations", and the shorter keys must still be
    asked). When the database refuses the combined statement (two columns of one name, a
    trailing semicolon), see ``_after_refusal``.
    """

    def __init__(self, name: str, templates: Sequence[str], backend: Backend, *, combine: bool = True) -> None:
        parsed = [QueryTemplate.parse(t) for t in templates]
        self._name = name
        self._compiled: tuple[CompiledQuery, ...] = tuple(t.compile(backend.dialect) for t in parsed)
        self._backend = backend
        self._combine = combine and not any(t.orders_rows for t in parsed)

    async def first(self, asks: Sequence[tuple[int, str]]) -> tuple[int, str] | None:
        parts: list[Part] = []
        for position, (number, key) in enumerate(asks):
            compiled = self._compiled[number]
            params = compiled.params(fold(key))
            if params is not None:  # a key that cannot fill the template is not asked
                parts.append((position, compiled.sql, params))
        if len(parts) < 2 or not self._combine or not all(key.isascii() for _, key in asks):  # noqa: PLR2004
            return await self._one_by_one(parts)
        try:
            return first_value(await self._together(parts))
        except BackendError as exc:
            if exc.reason != "query":
                raise
            return await self._after_refusal(parts)

    async def _one_by_one(self, parts: Sequence[Part]) -> tuple[int, str] | None:
        for position, sql, params in parts:
            value = join_rows(await self._backend.fetch(sql, params, self._name))
            if value is not None:
                return position, value
        return None

    async def _together(self, parts: Sequence[Part]) -> list[Row]:
        """Every part's rows, each led by its position: one statement per template, at once."""
        by_template: dict[str, list[Part]] = {}
        for part in parts:
            by_template.setdefault(part[1], []).append(part)
        groups = list(by_template.values())
        if len(groups) == 1:
            return await self._statement(groups[0])
        rows: list[Row] = []
        for result in await asyncio.gather(*map(self._statement, groups), return_exceptions=True):
            if isinstance(result, BaseException):
                raise result
            rows.extend(result)
        return rows

    async def _statement(self, group: Sequence[Part]) -> list[Row]:
        if len(group) == 1:  # one key: the plain query, its rows tagged here
            position, sql, params = group[0]
            return [(position, *row) for row in await self._backend.fetch(sql, params, self._name)]
        sql, values = combine(group)
        return await self._backend.fetch(sql, values, self._name)

    async def _after_refusal(self, parts: Sequence[Part]) -> tuple[int, str] | None:
        """The combined statement failed: the answer one query at a time, as Postfix asks.

        A query that fails before one has answered fails the lookup with its own error, as it
        would one by one. When every part answers alone, the combination is tried once more;
        if it fails again it is what the database refuses, and the map asks one key at a time
        from then on (said once, at INFO). A passing error (a lock, a killed statement) or a
        broken later table leaves combining on.
        """
        found: tuple[int, str] | None = None
        for position, sql, params in parts:
            try:
                value = join_rows(await self._backend.fetch(sql, params, self._name))
            except BackendError:
                if found is None:
                    raise
                return found  # that query is broken by itself, not the combination
            if found is None and value is not None:
                found = (position, value)
        try:
            await self._together(parts)
        except BackendError as again:
            if again.reason == "query" and self._combine:
                self._combine = False
                reason = " ".join(str(again).split())  # the server quotes the statement, newlines and all
                log.info(
                    "map %s: its queries cannot run as one statement (%s); asking one key at a time", self._name, reason
                )
        return found


def combine(parts: Sequence[tuple[int, str, Sequence[str]]]) -> tuple[str, list[str]]:
    """One statement asking every (position, sql, params) part; each row starts with its position.

    The newlines end any ``--`` or ``#`` comment at the end of a template.
    """
    sql = "\nUNION ALL\n".join(
        # The keys stay bound parameters: only the templates and the positions are SQL text.
        f"SELECT {position:d} AS mailmapd_position, q.* FROM (\n{text}\n) AS q"  # noqa: S608
        for position, text, _ in parts
    )
    return sql, [p for _, _, params in parts for p in params]


def first_value(rows: Sequence[Row]) -> tuple[int, str] | None:
    """The first position whose rows leave a value (rows of a ``combine`` statement)."""
    by_position: dict[int, list[Row]] = {}
    for row in rows:
        by_position.setdefault(int(row[0]), []).append(row[1:])
    for position in sorted(by_position):
        value = join_rows(by_position[position])
        if value is not None:
            return position, value
    return None


class ExactMap:
    """One query, the key as given (domains, forwardings, email2email)."""

    def __init__(self, source: Source) -> None:
        self._source = source

    async def lookup(self, key: str) -> str | None:
        found = await self._source.first([(0, key)])
        return found[1] if found is not None else None


class SearchMap:
    """One query, with each key of a search order: the first key that has a value wins."""

    def __init__(self, source: Source, order: Callable[[str], list[str]]) -> None:
        self._source = source
        self._order = order

    async def lookup(self, key: str) -> str | None:
        found = await self._source.first([(0, variant) for variant in self._order(key)])
        return found[1] if found is not None else None


class AliasMap:
    """virtual_alias_maps = forwardings, email2email, in Postfix's order.

    Every table is tried with one key before the next key, which is what keeps a catch-all
    ``@domain`` forwarding from swallowing mail for real mailboxes. A match found with the
    extension stripped carries the extension onto each address; a catch-all match does not.
    The source's queries are the tables, in order.
    """

    def __init__(self, source: Source, tables: int, delimiters: str, *, propagate: bool) -> None:
        self._source = source
        self._tables = tables
        self._delimiters = delimiters
        self._propagate = propagate

    async def lookup(self, key: str) -> str | None:
        variants = address_variants(key, self._delimiters)
        found = await self._source.first([(table, v.key) for v in variants for table in range(self._tables)])
        if found is None:
            return None
        position, value = found
        extension = variants[position // self._tables].extension
        if self._propagate and extension:
            return add_extension(value, extension) or None
        return value


def build_maps(cfg: Config, backend: Backend) -> dict[str, Map]:
    """Every map mailmapd serves, over one backend."""
    delim = cfg.recipient_delimiter

    def address_order(key: str) -> list[str]:
        return [v.key for v in address_variants(key, delim)]

    def queries(name: str, *tables: str) -> Queries:
        templates = [cfg.query_for(table) for table in tables or (name,)]
        return Queries(name, templates, backend, combine=cfg.lookup.combine_queries)

    return {
        "domains": ExactMap(queries("domains")),
        "mailboxes": SearchMap(queries("mailboxes"), address_order),
        "aliases": AliasMap(
            queries("aliases", "forwardings", "email2email"),
            2,
            delim,
            propagate=cfg.map_config("aliases").propagate_extension,
        ),
        "transports": SearchMap(queries("transports"), lambda key: transport_variants(key, delim)),
        "quota": SearchMap(queries("quota"), address_order),
        "forwardings": ExactMap(queries("forwardings")),
        "email2email": ExactMap(queries("email2email")),
    }
