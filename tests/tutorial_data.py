"""The tutorial's schema filled with awkward data, and the keys that probe it.

Shared by the differential test (mailmapd against Postfix's own mysql: client on the seed's
.cf files), the SQLite backend test and the end-to-end tests. Every domain is under the
reserved .test TLD; every nexthop is loopback.
"""

from __future__ import annotations

DOMAINS: list[str] = [
    "example.test",
    "Mixed.Example.TEST",
    "catchall.test",
    "xn--bcher-kva.test",
    "o'hara.test",
    "relay.example.test",
]

# Rows of users: email, password, quota.
USERS: list[tuple[str, str, int | None]] = [
    ("sales@example.test", "secret", 10485760),
    ("Mixed.Case@Mixed.Example.TEST", "secret", None),
    ("o'brien@example.test", "secret", 0),
    ("percent%user@example.test", "secret", 5),
    ("under_score@example.test", "secret", 7),
    ("back\\slash@example.test", "secret", 8),
    ("with space@example.test", "secret", 9),
    ("josé@example.test", "secret", 11),
    ("postmaster@example.test", "secret", 12),
    ("owner-list@example.test", "secret", 13),
    ("vip@example.test", "secret", 14),
    ("info@catchall.test", "secret", 15),
    ("x@xn--bcher-kva.test", "secret", 16),
]

# (source, destination); destination is a comma-separated list, spaces and all.
FORWARDINGS: list[tuple[str, str]] = [
    ("@example.test", "sales@example.test"),
    ("@catchall.test", "sales@example.test"),
    ("info@example.test", "sales@example.test, o'brien@example.test"),
    ("team@example.test", "sales@example.test,josé@example.test,friend@elsewhere.test"),
    ("list+admin@example.test", "vip@example.test"),
    ("loop@example.test", "loop@example.test"),
    ("nothing@example.test", ""),
    ("Upper@Mixed.Example.TEST", "Mixed.Case@Mixed.Example.TEST"),
    ("info@catchall.test", "vip@example.test"),
]

# (domain-or-address, transport)
TRANSPORTS: list[tuple[str, str]] = [
    ("example.test", "virtual:"),
    (".sub.example.test", "smtp:[127.0.0.1]:2525"),
    ("relay.example.test", ""),
    ("vip@example.test", "lmtp:unix:private/dovecot-lmtp"),
    ("o'hara.test", "error:5.1.1 no mail for o'hara"),
]


def _variants(email: str) -> list[str]:
    local, _, domain = email.rpartition("@")
    return [
        email,
        email.upper(),
        f"{local}+tag@{domain}",
        f"{local.upper()}+Tag+more@{domain.upper()}",
        f"nosuchuser@{domain}",
        f"nosuchuser+tag@{domain}",
        f"@{domain}",
        domain,
    ]


HOSTILE_KEYS: list[str] = [
    "x' OR '1'='1",
    "sales@example.test' OR '1'='1",
    "%",
    "%@example.test",
    "_ales@example.test",
    "sales@example.test\\",
    "back\\\\slash@example.test",
    "%s@example.test",
    "a" * 300 + "@example.test",
    "JOSÉ@EXAMPLE.TEST",
    "josé+tag@example.test",
    "postmaster+x@example.test",
    "owner-list+x@example.test",
    "+x@example.test",
    "a+b+c@example.test",
    "sales+@example.test",
    "user@sub.example.test",
    "user@deep.sub.example.test",
    "user@relay.example.test",
    "nobody@unknown.test",
    "unknown.test",
    "bare",
    "@",
    "two@at@example.test",
]


def probe_keys() -> list[str]:
    keys: list[str] = []
    for email, _, _ in USERS:
        keys.extend(_variants(email))
    for source, _ in FORWARDINGS:
        keys.extend(_variants(source) if not source.startswith("@") else [source, source.upper()])
    for domain in DOMAINS:
        keys.extend([domain, domain.upper(), f"someone@{domain}"])
    for target, _ in TRANSPORTS:
        keys.append(target)
    keys.extend(HOSTILE_KEYS)
    return list(dict.fromkeys(keys))


def rows() -> dict[str, list[tuple[object, ...]]]:
    return {
        "domains": [(d,) for d in DOMAINS],
        "users": list(USERS),
        "forwardings": list(FORWARDINGS),
        "transport": list(TRANSPORTS),
    }


def insert_statements(placeholder: str) -> list[tuple[str, tuple[object, ...]]]:
    """INSERTs of every row, with the backend's placeholder, as bound parameters."""
    out: list[tuple[str, tuple[object, ...]]] = []
    for table, table_rows in rows().items():
        for row in table_rows:
            marks = ", ".join([placeholder] * len(row))
            out.append((f"INSERT INTO {table} VALUES ({marks})", row))  # noqa: S608 - table names are ours
    return out
