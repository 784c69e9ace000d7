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

Values are assembled as mysql_table(5) does: every column of every row, joined by "," with
no space, NULL and '' skipped; nothing left means not found.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from mailmapd.sqltemplate import CompiledQuery, QueryTemplate

if TYPE_CHECKING:
    from mailmapd.backends import Backend, Row
    from mailmapd.config import Config

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
    """Where a map's values come from: one query (or a fake in unit tests)."""

    async def value(self, key: str) -> str | None: ...


class Query:
    """One query template compiled for one backend."""

    def __init__(self, template: str, backend: Backend) -> None:
        self._compiled: CompiledQuery = QueryTemplate.parse(template).compile(backend.dialect)
        self._backend = backend

    async def value(self, key: str) -> str | None:
        params = self._compiled.params(fold(key))
        if params is None:
            return None
        return join_rows(await self._backend.fetch(self._compiled.sql, params))


class ExactMap:
    """One query, the key as given (domains, forwardings, email2email)."""

    def __init__(self, query: Source) -> None:
        self._query = query

    async def lookup(self, key: str) -> str | None:
        return await self._query.value(key)


class SearchMap:
    """One query, tried with each key of a search order until one has a value."""

    def __init__(self, query: Source, order: Callable[[str], list[str]]) -> None:
        self._query = query
        self._order = order

    async def lookup(self, key: str) -> str | None:
        for variant in self._order(key):
            if (value := await self._query.value(variant)) is not None:
                return value
        return None


class AliasMap:
    """virtual_alias_maps = forwardings, email2email, in Postfix's order.

    Every table is tried with one key before the next key, which is what keeps a catch-all
    ``@domain`` forwarding from swallowing mail for real mailboxes. A match found with the
    extension stripped carries the extension onto each address; a catch-all match does not.
    """

    def __init__(self, tables: Sequence[Source], delimiters: str, *, propagate: bool) -> None:
        self._tables = tuple(tables)
        self._delimiters = delimiters
        self._propagate = propagate

    async def lookup(self, key: str) -> str | None:
        for variant in address_variants(key, self._delimiters):
            for table in self._tables:
                value = await table.value(variant.key)
                if value is None:
                    continue
                if self._propagate and variant.extension:
                    return add_extension(value, variant.extension) or None
                return value
        return None


def build_maps(cfg: Config, backend: Backend) -> dict[str, Map]:
    """Every map mailmapd serves, over one backend."""
    delim = cfg.recipient_delimiter

    def address_order(key: str) -> list[str]:
        return [v.key for v in address_variants(key, delim)]

    queries = {
        name: Query(cfg.query_for(name), backend)
        for name in ("domains", "forwardings", "mailboxes", "email2email", "transports", "quota")
    }
    return {
        "domains": ExactMap(queries["domains"]),
        "mailboxes": SearchMap(queries["mailboxes"], address_order),
        "aliases": AliasMap(
            [queries["forwardings"], queries["email2email"]],
            delim,
            propagate=cfg.map_config("aliases").propagate_extension,
        ),
        "transports": SearchMap(queries["transports"], lambda key: transport_variants(key, delim)),
        "quota": SearchMap(queries["quota"], address_order),
        "forwardings": ExactMap(queries["forwardings"]),
        "email2email": ExactMap(queries["email2email"]),
    }
