"""mysql_table(5) query templates: Postfix's expansion rules, compiled to bound parameters.

The expansion tables below are Postfix's behaviour (src/global/db_common.c
``db_common_expand``). ``test_expansion_table_is_postfix`` checks every row against the
installed Postfix itself, through ``postmap -q`` on a sqlite: table, so the tables are not
a guess.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pymysql.converters
import pytest

from mailmapd.sqltemplate import MYSQL, SQLITE, CompiledQuery, Dialect, QueryTemplate, TemplateError


def compile_sql(template: str, dialect: Dialect) -> CompiledQuery:
    return QueryTemplate.parse(template).compile(dialect)


def where(codes: str) -> str:
    """A query that uses each expansion of ``codes`` once, in order, as a whole literal."""
    clauses = " AND ".join(f"c{i}='%{c}'" for i, c in enumerate(codes))
    return "SELECT x FROM t WHERE " + clauses  # noqa: S608  # a template: its values are bound later


def mysql_literals_closed(sql: str) -> bool:
    """Whether every quoted literal of ``sql`` ends, read as MySQL reads it (backslash escapes)."""
    quote: str | None = None
    i = 0
    while i < len(sql):
        ch = sql[i]
        if quote is None:
            if ch in "'\"":
                quote = ch
        elif ch == "\\":
            i += 1
        elif ch == quote:
            if sql[i + 1 : i + 2] == quote:
                i += 1
            else:
                quote = None
        i += 1
    return quote is None


# --------------------------------------------------------------------------- expansion

# (expansions used by the query, lookup key, the values Postfix substitutes in that order,
# or None when Postfix sends no query at all and the answer is "not found").
EXPANSIONS = [
    # %s: the key as it is, whatever its shape; only the empty key is never looked up.
    pytest.param("s", "user@example.com", ("user@example.com",), id="s-address"),
    pytest.param("s", "plain", ("plain",), id="s-no-at"),
    pytest.param("s", "@example.com", ("@example.com",), id="s-catch-all"),
    pytest.param("s", "user@", ("user@",), id="s-empty-domain"),
    pytest.param("s", "@", ("@",), id="s-only-at"),
    pytest.param("s", "", None, id="s-empty-key"),
    pytest.param("ss", "k", ("k", "k"), id="s-twice"),
    # %u: the local part, split at the LAST '@'; the whole key when there is no '@'.
    pytest.param("u", "user@example.com", ("user",), id="u-address"),
    pytest.param("u", "plain", ("plain",), id="u-no-at-is-whole-key"),
    pytest.param("u", "user@", ("user",), id="u-needs-no-domain"),
    pytest.param("u", "@example.com", None, id="u-empty-local-part"),
    pytest.param("u", "@", None, id="u-only-at"),
    pytest.param("u", "a@b@example.com", ("a@b",), id="u-last-at"),
    pytest.param("u", "@@example.com", ("@",), id="u-local-part-is-at"),
    pytest.param("u", "", None, id="u-empty-key"),
    # %d: the domain after the LAST '@'; no '@' or an empty domain: no query.
    pytest.param("d", "user@example.com", ("example.com",), id="d-address"),
    pytest.param("d", "plain", None, id="d-no-at"),
    pytest.param("d", "user@", None, id="d-empty-domain"),
    pytest.param("d", "@", None, id="d-only-at"),
    pytest.param("d", "@example.com", ("example.com",), id="d-catch-all"),
    pytest.param("d", "a@b@example.com", ("example.com",), id="d-last-at"),
    pytest.param("ud", "user@example.com", ("user", "example.com"), id="ud-address"),
    pytest.param("du", "user@example.com", ("example.com", "user"), id="du-order-kept"),
    pytest.param("ud", "@example.com", None, id="ud-empty-local-part"),
    pytest.param("ud", "plain", None, id="ud-no-at"),
    # In a query %S %U %D are %s %u %d; nothing is case-folded.
    pytest.param("SUD", "User@Example.COM", ("User@Example.COM", "User", "Example.COM"), id="SUD"),
    pytest.param("U", "plain", ("plain",), id="U-no-at"),
    pytest.param("U", "@example.com", None, id="U-empty-local-part"),
    pytest.param("D", "plain", None, id="D-no-at"),
    pytest.param("D", "user@", None, id="D-empty-domain"),
    pytest.param("S", "", None, id="S-empty-key"),
    # %1-%9: domain labels counted from the right; too few labels: no query.
    pytest.param("1", "user@mail.example.com", ("com",), id="1"),
    pytest.param("2", "user@mail.example.com", ("example",), id="2"),
    pytest.param("3", "user@mail.example.com", ("mail",), id="3"),
    pytest.param("321", "user@mail.example.com", ("mail", "example", "com"), id="321"),
    pytest.param("9", "u@a.b.c.d.e.f.g.h.i", ("a",), id="9"),
    pytest.param("1", "user@com", ("com",), id="1-single-label"),
    pytest.param("2", "user@com", None, id="2-too-few-labels"),
    pytest.param("4", "user@mail.example.com", None, id="4-too-few-labels"),
    pytest.param("1", "plain", None, id="1-no-at"),
    pytest.param("1", "user@", None, id="1-empty-domain"),
    pytest.param("1", "@example.com", ("com",), id="1-catch-all"),
    pytest.param("u2", "@example.com", None, id="u2-empty-local-part"),
    pytest.param("s2", "user@com", None, id="s2-one-expansion-suppresses-all"),
    # Empty labels: an empty label among the needed ones is never sent.
    pytest.param("2", "user@.example.com", ("example",), id="2-leading-dot-not-needed"),
    pytest.param("3", "user@.example.com", None, id="3-leading-dot-needed"),
    pytest.param("3", "user@example..com", None, id="3-double-dot-needed"),
    pytest.param("1", "user@.", None, id="1-only-dot"),
]

# Where the lower labels are empty, Postfix does NOT suppress the query: db_common_expand()
# splits the domain with argv_split(), which skips empty tokens, so "example..com" has the
# labels [example, com] and its "empty label" check can never fire. Checked with postmap
# 3.7.11 (test_expansion_table_is_postfix runs these rows too).
EMPTY_LABELS_AS_POSTFIX = [
    pytest.param("2", "user@example..com", ("example",), id="2-double-dot"),
    pytest.param("1", "user@example.com.", ("com",), id="1-trailing-dot"),
    pytest.param("2", "user@example.com.", ("example",), id="2-trailing-dot"),
    pytest.param("3", "user@a..b.c", ("a",), id="3-double-dot-below"),
]


@pytest.mark.parametrize(("codes", "key", "expected"), EXPANSIONS)
def test_expansion(codes: str, key: str, expected: tuple[str, ...] | None) -> None:
    for dialect in (MYSQL, SQLITE):
        assert compile_sql(where(codes), dialect).params(key) == expected


# Postfix fills %1-%9 from the non-empty labels (see EMPTY_LABELS_AS_POSTFIX).
@pytest.mark.parametrize(("codes", "key", "expected"), EMPTY_LABELS_AS_POSTFIX)
def test_expansion_skips_empty_labels_as_postfix(codes: str, key: str, expected: tuple[str, ...] | None) -> None:
    assert compile_sql(where(codes), SQLITE).params(key) == expected


def test_expansion_slots_follow_the_template() -> None:
    query = compile_sql("SELECT x FROM t WHERE a='%d' AND b='%u' AND c='%1' AND d='%s'", SQLITE)
    assert query.slots == ("d", "u", "1", "s")
    assert query.params("me@mail.example.org") == (
        "mail.example.org",
        "me",
        "org",
        "me@mail.example.org",
    )


def test_template_without_expansions_is_sent_for_every_nonempty_key() -> None:
    query = compile_sql("SELECT 'static'", SQLITE)
    assert query.params("anything") == ()
    assert query.params("@") == ()
    assert query.params("") is None


class Postmap(NamedTuple):
    command: str
    directory: Path


@pytest.fixture(scope="module")
def postmap_oracle(tmp_path_factory: pytest.TempPathFactory) -> Postmap:
    """The installed postmap, a config directory and a sqlite database with one row in t."""
    postmap = shutil.which("postmap") or shutil.which("postmap", path="/usr/sbin:/usr/bin")
    postconf = shutil.which("postconf") or shutil.which("postconf", path="/usr/sbin:/usr/bin")
    if postmap is None or postconf is None:
        pytest.fail("postmap is not installed: apt-get install postfix postfix-sqlite", pytrace=False)
    directory = tmp_path_factory.mktemp("postmap")
    (directory / "main.cf").write_text(
        "compatibility_level = 3.6\nmyhostname = mailmapd-test.localhost\nsmtputf8_enable = yes\n"
    )
    types = subprocess.run(
        [postconf, "-c", str(directory), "-m"], capture_output=True, text=True, check=True, timeout=30
    )
    if "sqlite" not in types.stdout.split():
        pytest.fail("Postfix has no sqlite: table type: apt-get install postfix-sqlite", pytrace=False)
    with sqlite3.connect(directory / "t.db") as db:
        db.execute("CREATE TABLE t (x TEXT)")
        db.execute("INSERT INTO t VALUES ('row')")
    db.close()
    return Postmap(postmap, directory)


def postmap_query(postmap: Postmap, query: str, key: str) -> str | None:
    """What ``postmap -q KEY sqlite:...`` answers for ``query``, or None for not found."""
    directory = postmap.directory
    cf = directory / f"q{time.monotonic_ns()}.cf"
    cf.write_text(f"dbpath = {directory / 't.db'}\nquery = {query}\n")
    # A table file modified in the last second makes Postfix wait ~2 s before reading it.
    past = time.time() - 60
    os.utime(cf, (past, past))
    result = subprocess.run(
        [postmap.command, "-f", "-c", str(directory), "-q", key, f"sqlite:{cf}"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode in {0, 1}, result.stderr
    return result.stdout.rstrip("\n") if result.returncode == 0 else None


@pytest.mark.parametrize(("codes", "key", "expected"), EXPANSIONS + EMPTY_LABELS_AS_POSTFIX)
def test_expansion_table_is_postfix(
    postmap_oracle: Postmap, codes: str, key: str, expected: tuple[str, ...] | None
) -> None:
    # One literal showing every substituted value: "[user][example.com]".
    query = "SELECT '" + "".join(f"[%{c}]" for c in codes) + "' FROM t"  # noqa: S608  # a template, no values
    want = None if expected is None else "".join(f"[{value}]" for value in expected)
    assert postmap_query(postmap_oracle, query, key) == want


# --------------------------------------------------------------------------- compile

SEED_MAILBOXES = (
    "SELECT CONCAT(SUBSTRING_INDEX(email,'@',-1),'/',SUBSTRING_INDEX(email,'@',1),'/') FROM users WHERE email='%s'"
)

# (template, MySQL SQL, SQLite SQL, slots)
PORTABLE = [
    pytest.param(
        "SELECT email FROM users WHERE email='%s'",
        "SELECT email FROM users WHERE email=%s",
        "SELECT email FROM users WHERE email=?",
        ("s",),
        id="quoted-expansion-is-bare-placeholder",
    ),
    pytest.param(
        'SELECT email FROM users WHERE email="%s"',
        "SELECT email FROM users WHERE email=%s",
        "SELECT email FROM users WHERE email=?",
        ("s",),
        id="double-quoted-expansion",
    ),
    pytest.param(
        "SELECT quota FROM users WHERE id=%s",
        "SELECT quota FROM users WHERE id=%s",
        "SELECT quota FROM users WHERE id=?",
        ("s",),
        id="unquoted-expansion",
    ),
    pytest.param(
        SEED_MAILBOXES,
        "SELECT CONCAT(SUBSTRING_INDEX(email,'@',-1),'/',SUBSTRING_INDEX(email,'@',1),'/') FROM users WHERE email=%s",
        "SELECT CONCAT(SUBSTRING_INDEX(email,'@',-1),'/',SUBSTRING_INDEX(email,'@',1),'/') FROM users WHERE email=?",
        ("s",),
        id="seed-mailboxes-literals-kept",
    ),
    pytest.param(
        "SELECT goto FROM alias WHERE address='%u@%d'",
        "SELECT goto FROM alias WHERE address=CONCAT(%s, '@', %s)",
        "SELECT goto FROM alias WHERE address=(? || '@' || ?)",
        ("u", "d"),
        id="mixed-literal-concatenated",
    ),
    pytest.param(
        "SELECT x FROM t WHERE a='pre-%s'",
        "SELECT x FROM t WHERE a=CONCAT('pre-', %s)",
        "SELECT x FROM t WHERE a=('pre-' || ?)",
        ("s",),
        id="text-then-expansion",
    ),
    pytest.param(
        "SELECT x FROM t WHERE a='%s-post'",
        "SELECT x FROM t WHERE a=CONCAT(%s, '-post')",
        "SELECT x FROM t WHERE a=(? || '-post')",
        ("s",),
        id="expansion-then-text",
    ),
    pytest.param(
        "SELECT x FROM t WHERE a='%u%d'",
        "SELECT x FROM t WHERE a=CONCAT(%s, %s)",
        "SELECT x FROM t WHERE a=(? || ?)",
        ("u", "d"),
        id="adjacent-expansions",
    ),
    pytest.param(
        "SELECT x FROM t WHERE a='%2.%1'",
        "SELECT x FROM t WHERE a=CONCAT(%s, '.', %s)",
        "SELECT x FROM t WHERE a=(? || '.' || ?)",
        ("2", "1"),
        id="labels",
    ),
    pytest.param(
        "SELECT x FROM t WHERE a='%S' AND b='%U' AND c='%D'",
        "SELECT x FROM t WHERE a=%s AND b=%s AND c=%s",
        "SELECT x FROM t WHERE a=? AND b=? AND c=?",
        ("S", "U", "D"),
        id="upper-case",
    ),
    pytest.param(
        "SELECT x FROM t WHERE a LIKE '%%'",
        "SELECT x FROM t WHERE a LIKE '%%'",
        "SELECT x FROM t WHERE a LIKE '%'",
        (),
        id="percent-in-literal",
    ),
    pytest.param(
        "SELECT x FROM t WHERE a='%%s'",
        "SELECT x FROM t WHERE a='%%s'",
        "SELECT x FROM t WHERE a='%s'",
        (),
        id="escaped-percent-then-s-is-text",
    ),
    pytest.param(
        "SELECT d FROM t WHERE d LIKE '%%.%d'",
        "SELECT d FROM t WHERE d LIKE CONCAT('%%.', %s)",
        "SELECT d FROM t WHERE d LIKE ('%.' || ?)",
        ("d",),
        id="percent-in-mixed-literal",
    ),
    pytest.param(
        "SELECT quota %% 7 FROM users WHERE email='%s'",
        "SELECT quota %% 7 FROM users WHERE email=%s",
        "SELECT quota % 7 FROM users WHERE email=?",
        ("s",),
        id="percent-outside-literal",
    ),
    pytest.param(
        "SELECT x FROM t WHERE n='O''Brien'",
        "SELECT x FROM t WHERE n='O''Brien'",
        "SELECT x FROM t WHERE n='O''Brien'",
        (),
        id="doubled-quote-kept",
    ),
    pytest.param(
        "SELECT x FROM t WHERE n='it''s %s'",
        "SELECT x FROM t WHERE n=CONCAT('it''s ', %s)",
        "SELECT x FROM t WHERE n=('it''s ' || ?)",
        ("s",),
        id="doubled-quote-in-mixed-literal",
    ),
    pytest.param(
        "SELECT x FROM t WHERE n='a\\\\b' AND m='%s'",
        "SELECT x FROM t WHERE n='a\\\\b' AND m=%s",
        "SELECT x FROM t WHERE n='a\\\\b' AND m=?",
        ("s",),
        id="backslash-backslash-kept",
    ),
    pytest.param(
        "SELECT x FROM t WHERE n='say \"%s\"'",
        "SELECT x FROM t WHERE n=CONCAT('say \"', %s, '\"')",
        "SELECT x FROM t WHERE n=('say \"' || ? || '\"')",
        ("s",),
        id="other-quote-inside-literal",
    ),
    pytest.param(
        "SELECT x FROM t WHERE n='' AND m='%s'",
        "SELECT x FROM t WHERE n='' AND m=%s",
        "SELECT x FROM t WHERE n='' AND m=?",
        ("s",),
        id="empty-literal",
    ),
]

# Backslash escapes are MySQL syntax; they are kept as written (SQLite would refuse them).
MYSQL_ONLY = [
    pytest.param(
        "SELECT x FROM t WHERE n='it\\'s'",
        "SELECT x FROM t WHERE n='it\\'s'",
        "SELECT x FROM t WHERE n='it\\'s'",
        (),
        id="backslash-quote-kept",
    ),
    pytest.param(
        "SELECT x FROM t WHERE n='\\'%s\\''",
        "SELECT x FROM t WHERE n=CONCAT('\\'', %s, '\\'')",
        "SELECT x FROM t WHERE n=('\\'' || ? || '\\'')",
        ("s",),
        id="backslash-quote-in-mixed-literal",
    ),
]

COMPILED = PORTABLE + MYSQL_ONLY


@pytest.mark.parametrize(("template", "mysql", "sqlite", "slots"), COMPILED)
def test_compile(template: str, mysql: str, sqlite: str, slots: tuple[str, ...]) -> None:
    for dialect, sql in ((MYSQL, mysql), (SQLITE, sqlite)):
        query = compile_sql(template, dialect)
        assert query.sql == sql
        assert query.slots == slots
    assert mysql_literals_closed(mysql)


@pytest.mark.parametrize(("template", "mysql", "sqlite", "slots"), PORTABLE)
def test_compiled_sqlite_runs(template: str, mysql: str, sqlite: str, slots: tuple[str, ...]) -> None:
    """SQLite accepts every compiled query, with one parameter per placeholder."""
    with sqlite3.connect(":memory:") as db:
        db.execute("CREATE TABLE t (x, a, b, c, d, n, m)")
        db.execute("CREATE TABLE users (email, quota, id)")
        db.execute("CREATE TABLE alias (goto, address)")
        db.create_function("CONCAT", -1, lambda *args: "".join(map(str, args)))
        db.create_function("SUBSTRING_INDEX", 3, lambda s, _d, _n: s)
        query = compile_sql(template, SQLITE)
        db.execute(query.sql, ("v",) * len(query.slots)).fetchall()
    db.close()


# (template, key, the statement pymysql sends to MySQL)
MYSQL_FORMATTED = [
    pytest.param(
        "SELECT quota %% 7 FROM users WHERE email='%s'",
        "o'brien@example.com",
        "SELECT quota % 7 FROM users WHERE email='o\\'brien@example.com'",
        id="percent-outside-literal",
    ),
    pytest.param(
        "SELECT d FROM t WHERE d LIKE '%%.%d'",
        "user@example.com",
        "SELECT d FROM t WHERE d LIKE CONCAT('%.', 'example.com')",
        id="percent-in-mixed-literal",
    ),
    pytest.param(
        "SELECT x FROM t WHERE a='50%%' AND b='%s'",
        "100%",
        "SELECT x FROM t WHERE a='50%' AND b='100%'",
        id="percent-in-literal-and-key",
    ),
]


@pytest.mark.parametrize(("template", "key", "statement"), MYSQL_FORMATTED)
def test_mysql_sql_survives_pymysql_formatting(template: str, key: str, statement: str) -> None:
    """pymysql runs ``sql % escaped_params``: doubled percent signs come out single."""
    query = compile_sql(template, MYSQL)
    params = query.params(key)
    assert params is not None
    escaped = tuple(pymysql.converters.escape_item(p, "utf8mb4") for p in params)
    assert query.sql % escaped == statement


# A backslash right before an expansion inside a literal: Postfix would paste the key after
# it, so the backslash escapes the key's first character. A bound parameter cannot do that,
# and keeping the backslash would leave MySQL's literal open ('a\', ...): refuse the template.
def test_backslash_before_expansion_is_refused() -> None:
    with pytest.raises(TemplateError, match="backslash before the expansion at offset 27"):
        QueryTemplate.parse("SELECT x FROM t WHERE a='a\\%s'")
    # A backslash before a literal percent sign is fine.
    query = compile_sql("SELECT x FROM t WHERE a LIKE 'a\\%%'", MYSQL)
    assert mysql_literals_closed(query.sql), query.sql


# --------------------------------------------------------------------------- errors

INVALID = [
    pytest.param("SELECT x FROM t WHERE a='%x'", "'%x' at offset 25", id="unknown-letter"),
    pytest.param("SELECT x FROM t WHERE a=%x", "'%x' at offset 24", id="unknown-outside-quotes"),
    pytest.param("SELECT x FROM t WHERE a='%0'", "'%0' at offset 25", id="label-zero"),
    pytest.param("SELECT x FROM t WHERE a='% '", "'% ' at offset 25", id="percent-space"),
    pytest.param("SELECT 100%", "'%' at offset 10", id="trailing-percent"),
    pytest.param("SELECT x FROM t WHERE a='%s' AND b='%", "'%' at offset 36", id="trailing-in-quote"),
    pytest.param("SELECT '%s' %z", "'%z' at offset 12", id="after-valid-one"),
]


@pytest.mark.parametrize(("template", "shown"), INVALID)
def test_invalid_expansion(template: str, shown: str) -> None:
    with pytest.raises(TemplateError, match=f"invalid expansion {shown}") as info:
        QueryTemplate.parse(template)
    assert isinstance(info.value, ValueError)


UNTERMINATED = [
    pytest.param("SELECT x FROM t WHERE a='%s", "' string starting at offset 24", id="single"),
    pytest.param('SELECT x FROM t WHERE a="%s', '" string starting at offset 24', id="double"),
    pytest.param("SELECT 'a', 'b", "' string starting at offset 12", id="second-literal"),
    pytest.param("SELECT 'abc\\'", "' string starting at offset 7", id="backslash-escapes-quote"),
    pytest.param("SELECT 'it''", "' string starting at offset 7", id="doubled-quote-at-end"),
]


@pytest.mark.parametrize(("template", "shown"), UNTERMINATED)
def test_unterminated_literal(template: str, shown: str) -> None:
    with pytest.raises(TemplateError, match=f"^unterminated {shown}$"):
        QueryTemplate.parse(template)


# --------------------------------------------------------------------------- injection


@pytest.fixture
def users() -> Iterator[sqlite3.Connection]:
    """Two rows; any key that escaped its parameter would find them."""
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE users (email TEXT PRIMARY KEY)")
    db.executemany("INSERT INTO users VALUES (?)", [("alice@example.com",), ("bob@example.com",)])
    yield db
    db.close()


def run(db: sqlite3.Connection, template: str, key: str) -> list[str]:
    query = compile_sql(template, SQLITE)
    params = query.params(key)
    assert params is not None
    return [row[0] for row in db.execute(query.sql, params)]


INJECTIONS = [
    pytest.param("x' OR '1'='1", id="or-true"),
    pytest.param("' OR 1=1 --", id="comment"),
    pytest.param("x' UNION SELECT email FROM users WHERE '1'='1", id="union"),
    pytest.param("%' OR email LIKE '%", id="like"),
]


@pytest.mark.parametrize("key", INJECTIONS)
def test_injection_is_just_a_key(users: sqlite3.Connection, key: str) -> None:
    template = "SELECT email FROM users WHERE email='%s'"
    # The key really is an attack: pasted as Postfix pastes it without quoting, it matches.
    pasted = template.replace("%s", key)
    assert len(users.execute(pasted).fetchall()) >= 2
    assert run(users, template, key) == []
    assert run(users, "SELECT email FROM users WHERE email='%u@%d'", key + "@example.com") == []


def test_injection_cannot_run_a_second_statement(users: sqlite3.Connection) -> None:
    key = "x'; DROP TABLE users; --"
    assert run(users, "SELECT email FROM users WHERE email='%s'", key) == []
    assert users.execute("SELECT count(*) FROM users").fetchone() == (2,)


def test_mixed_literal_still_matches_the_real_address(users: sqlite3.Connection) -> None:
    assert run(users, "SELECT email FROM users WHERE email='%u@%d'", "alice@example.com") == ["alice@example.com"]


SPECIAL_KEYS = [
    "a%b@example.com",
    "a_b@example.com",
    "%",
    "_",
    "a\\b@example.com",
    "\\",
    "a\\'b@example.com",
    "o'brien@example.com",
    "'",
    "''",
    'd"q@example.com',
    "jürgen@exämple.com",
    "Jürgen@exämple.com",
    "用户@例子.中国",
    "tab\there@example.com",
]

# Rows a key would also hit if %, _ or \ were read as patterns or escapes.
DECOYS = ["aXb@example.com", "ab@example.com", "a\\\\b@example.com", "x", "ab", "a'b@example.com"]


@pytest.mark.parametrize("key", SPECIAL_KEYS)
def test_special_keys_match_only_themselves(key: str) -> None:
    with sqlite3.connect(":memory:") as db:
        db.execute("CREATE TABLE users (email TEXT PRIMARY KEY)")
        db.executemany("INSERT INTO users VALUES (?)", [(k,) for k in SPECIAL_KEYS + DECOYS])
        assert run(db, "SELECT email FROM users WHERE email='%s'", key) == [key]
        local, _, domain = key.rpartition("@")
        if local:
            assert run(db, "SELECT email FROM users WHERE email='%u@%d'", key) == [key]
            assert compile_sql(where("ud"), SQLITE).params(key) == (local, domain)
    db.close()


@pytest.mark.parametrize(
    ("template", "orders"),
    [
        pytest.param("SELECT d FROM f WHERE s='%s'", False, id="plain"),
        pytest.param("SELECT d FROM f WHERE s='%s' ORDER BY id", True, id="order-by"),
        pytest.param("select d from f where s='%s' order\n  by id limit 1", True, id="lower-case-any-space"),
        pytest.param("SELECT GROUP_CONCAT(d ORDER BY d) FROM f WHERE s='%s'", True, id="inside-a-function"),
        pytest.param("SELECT d FROM f WHERE s='%s' AND n<>'order by'", False, id="inside-a-literal"),
        pytest.param("SELECT border_by FROM f WHERE s='%s'", False, id="part-of-a-name"),
    ],
)
def test_orders_rows(template: str, orders: bool) -> None:
    assert QueryTemplate.parse(template).orders_rows is orders
