"""The tutorial's schema filled at a chosen size, and the keys a benchmark asks.

Everything is derived from one seed, so two runs at one size ask the same keys of the same
rows. Domains are under the reserved ``.test`` TLD; unknown domains under ``.invalid``.

Key mix (``KeyMix``), as a mail server sees recipients:

- ``user``: an existing mailbox, ``first.last7@domain``;
- ``tagged``: an existing mailbox with a ``+tag`` (found through the search order);
- ``alias``: a forwardings source (an alias, not a mailbox);
- ``unknown_user``: a user nobody created, in a domain we host;
- ``unknown_domain``: a domain we do not host.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailmapd.schema import MYSQL_TABLES, SQLITE_TABLES

SEED = 20240707
TRANSPORT = "smtp:[127.0.0.1]:2525"
# A SHA512-CRYPT-sized password hash: the lookups never read it, but it sizes the rows.
PASSWORD = "{SHA512-CRYPT}$6$" + "x" * 90

_FIRST = ("anna", "ben", "carla", "dan", "eva", "finn", "gina", "hugo", "ida", "jon", "kim", "lea", "max", "nina")
_LAST = ("adler", "berg", "cole", "dietz", "ernst", "fox", "graf", "hahn", "iske", "jung", "kahn", "lutz", "marx")
_WORDS = ("north", "blue", "river", "stone", "green", "alpha", "delta", "cedar", "maple", "orbit", "pixel", "quill")
_ROLES = ("info", "sales", "support", "office", "team", "billing", "abuse", "hello", "jobs", "press", "admin")
_TAGS = ("news", "shop", "list", "bank", "travel", "social", "work", "spam")


@dataclass(frozen=True, slots=True)
class Size:
    domains: int
    users: int
    aliases: int
    transports: int


SIZES: dict[str, Size] = {
    "tiny": Size(domains=50, users=500, aliases=100, transports=5),
    "small": Size(domains=1_000, users=10_000, aliases=2_000, transports=100),
    "medium": Size(domains=10_000, users=100_000, aliases=20_000, transports=1_000),
    "large": Size(domains=100_000, users=1_000_000, aliases=200_000, transports=10_000),
}


@dataclass(frozen=True, slots=True)
class KeyMix:
    """Shares of each kind of key; they need not add up to 1 (they are normalised)."""

    user: float = 0.55
    tagged: float = 0.10
    alias: float = 0.10
    unknown_user: float = 0.15
    unknown_domain: float = 0.10

    def counts(self, total: int) -> dict[str, int]:
        shares = {
            "user": self.user,
            "tagged": self.tagged,
            "alias": self.alias,
            "unknown_user": self.unknown_user,
            "unknown_domain": self.unknown_domain,
        }
        whole = sum(shares.values())
        counts = {kind: int(total * share / whole) for kind, share in shares.items()}
        counts["user"] += total - sum(counts.values())
        return counts


@dataclass(slots=True)
class Dataset:
    """The four tables' rows; emails and domains in lower case, as a mail server stores them."""

    size: Size
    domains: list[str] = field(default_factory=list)
    users: list[tuple[str, str, int]] = field(default_factory=list)  # email, password, quota
    forwardings: list[tuple[str, str]] = field(default_factory=list)  # source, destination
    transports: list[tuple[str, str]] = field(default_factory=list)  # domain, transport

    @property
    def emails(self) -> list[str]:
        return [email for email, _, _ in self.users]

    def tables(self) -> dict[str, Sequence[tuple[Any, ...]]]:
        return {
            "domains": [(d,) for d in self.domains],
            "users": self.users,
            "forwardings": self.forwardings,
            "transport": self.transports,
        }


def generate(size: Size, seed: int = SEED) -> Dataset:
    """The rows of one size: users spread unevenly over domains, as hosting has them."""
    rng = random.Random(seed)
    data = Dataset(size)
    data.domains = [f"{rng.choice(_WORDS)}-{rng.choice(_WORDS)}-{i}.test" for i in range(size.domains)]
    # A few large domains and a long tail: weight 1/(rank+1)^0.8.
    weights = [1.0 / (i + 1) ** 0.8 for i in range(size.domains)]
    homes = rng.choices(range(size.domains), cum_weights=list(_accumulate(weights)), k=size.users)
    for j, home in enumerate(homes):
        local = f"{rng.choice(_FIRST)}.{rng.choice(_LAST)}{j}"  # j keeps every address unique
        data.users.append((f"{local}@{data.domains[home]}", PASSWORD, rng.choice((0, 10485760, 52428800))))
    emails = data.emails
    catchalls = max(1, size.domains // 100)
    for k in range(size.aliases):
        if k < catchalls:
            source = f"@{data.domains[k]}"
        else:
            domain = data.domains[rng.randrange(size.domains)]
            source = f"{rng.choice(_ROLES)}{k}@{domain}"
        targets = rng.sample(emails, k=rng.choice((1, 1, 1, 2, 3)))
        data.forwardings.append((source, ",".join(targets)))
    for domain in rng.sample(data.domains, k=min(size.transports, size.domains)):
        data.transports.append((domain, TRANSPORT))
    return data


def _accumulate(values: Iterable[float]) -> Iterator[float]:
    total = 0.0
    for v in values:
        total += v
        yield total


def keys(data: Dataset, count: int, mix: KeyMix | None = None, seed: int = SEED + 1) -> list[tuple[str, str]]:
    """``count`` distinct (kind, key) pairs in the given mix, shuffled."""
    rng = random.Random(seed)
    counts = (mix or KeyMix()).counts(count)
    emails = data.emails
    picked = rng.sample(emails, k=min(len(emails), counts["user"] + counts["tagged"]))
    out: list[tuple[str, str]] = [("user", e) for e in picked[: counts["user"]]]
    for e in picked[counts["user"] :]:
        local, _, domain = e.partition("@")
        out.append(("tagged", f"{local}+{rng.choice(_TAGS)}@{domain}"))
    sources = [s for s, _ in data.forwardings if not s.startswith("@")]
    out.extend(("alias", s) for s in rng.sample(sources, k=min(len(sources), counts["alias"])))
    out.extend(
        ("unknown_user", f"nobody{k}.{rng.choice(_LAST)}@{rng.choice(data.domains)}")
        for k in range(counts["unknown_user"])
    )
    out.extend(
        ("unknown_domain", f"{rng.choice(_FIRST)}{k}@{rng.choice(_WORDS)}-{k}.invalid")
        for k in range(counts["unknown_domain"])
    )
    rng.shuffle(out)
    return out


# Per recipient, the lookups a Postfix with mailmapd's maps sends (docs/postfix.md):
# smtpd at RCPT asks virtual_mailbox_domains, virtual_alias_maps and virtual_mailbox_maps;
# cleanup asks virtual_alias_maps again; trivial-rewrite asks virtual_mailbox_domains and
# transport_maps. virtual(8) reads its mailbox map itself, not through mailmapd.
RECIPIENT_LOOKUPS: tuple[tuple[str, str], ...] = (
    ("domains", "domain"),
    ("aliases", "address"),
    ("mailboxes", "address"),
    ("aliases", "address"),
    ("domains", "domain"),
    ("transports", "address"),
)


def recipient_stream(
    population: Sequence[str], recipients: int, zipf_s: float = 1.0, seed: int = SEED + 2
) -> list[str]:
    """Socketmap requests ("MAP KEY") for ``recipients`` recipients drawn from ``population``.

    Recipients repeat as mail does: the address of rank r is drawn with weight 1/r^s, and
    each recipient costs the six lookups of RECIPIENT_LOOKUPS.
    """
    rng = random.Random(seed)
    weights = [1.0 / (r + 1) ** zipf_s for r in range(len(population))]
    drawn = rng.choices(population, cum_weights=list(_accumulate(weights)), k=recipients)
    lines: list[str] = []
    for address in drawn:
        domain = address.rpartition("@")[2]
        lines.extend(f"{table} {address if what == 'address' else domain}" for table, what in RECIPIENT_LOOKUPS)
    return lines


def repeat_fraction(lines: Sequence[str]) -> float:
    """Share of requests whose (map, key) was asked before in the stream."""
    return 1.0 - len(set(lines)) / len(lines) if lines else 0.0


# --------------------------------------------------------------------------- loading


def load_mysql(data: Dataset, *, host: str, port: int, user: str, password: str, database: str) -> None:
    """Create the tutorial's tables in ``database`` and fill them (bulk INSERTs)."""
    import pymysql  # noqa: PLC0415 - only the MariaDB parts need it

    conn = pymysql.connect(
        host=host, port=port, user=user, password=password, database=database, charset="utf8mb4", autocommit=False
    )
    try:
        with conn.cursor() as cur:
            for table in ("domains", "forwardings", "users", "transport"):
                cur.execute(f"DROP TABLE IF EXISTS {table}")
            for ddl in MYSQL_TABLES:
                cur.execute(ddl)
            for table, rows in data.tables().items():
                marks = ", ".join(["%s"] * len(rows[0])) if rows else ""
                for chunk in _chunks(rows, 5000):
                    cur.executemany(f"INSERT INTO {table} VALUES ({marks})", chunk)  # noqa: S608 - our table names
        conn.commit()
    finally:
        conn.close()


def load_sqlite(data: Dataset, path: Path) -> None:
    """The same rows in the embedded backend's schema."""
    with sqlite3.connect(path) as conn:
        for ddl in SQLITE_TABLES:
            conn.execute(ddl)
        for table, rows in data.tables().items():
            if rows:
                marks = ", ".join(["?"] * len(rows[0]))
                conn.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)  # noqa: S608 - our table names
    conn.close()


def write_sql(data: Dataset, path: Path) -> None:
    """A MySQL script (the tutorial's tables and every row) for loading by hand."""

    def quote(value: object) -> str:
        if isinstance(value, int):
            return str(value)
        return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"

    with path.open("w") as out:
        for ddl in MYSQL_TABLES:
            out.write(ddl + ";\n")
        for table, rows in data.tables().items():
            for chunk in _chunks(rows, 1000):
                values = ",\n".join("(" + ", ".join(quote(v) for v in row) + ")" for row in chunk)
                out.write(f"INSERT INTO {table} VALUES\n{values};\n")


def _chunks(rows: Sequence[tuple[Any, ...]], n: int) -> Iterator[Sequence[tuple[Any, ...]]]:
    for i in range(0, len(rows), n):
        yield rows[i : i + n]
