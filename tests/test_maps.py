"""The maps' search orders and value assembly, against fake sources."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import pytest

from mailmapd.backends import BackendError, Row
from mailmapd.maps import (
    AliasMap,
    ExactMap,
    Queries,
    SearchMap,
    Variant,
    add_extension,
    address_variants,
    build_maps,
    combine,
    first_value,
    join_rows,
    split_extension,
    transport_variants,
)
from mailmapd.sqltemplate import SQLITE
from tests.conftest import make_config


class FakeSource:
    """Tables as dicts (query number n is tables[n]); records every key it is asked, in order."""

    def __init__(self, *tables: dict[str, str]) -> None:
        self.tables = tables
        self.asked: list[str] = []

    async def first(self, asks: Sequence[tuple[int, str]]) -> tuple[int, str] | None:
        for position, (number, key) in enumerate(asks):
            self.asked.append(key)
            if (value := self.tables[number].get(key)) is not None:
                return position, value
        return None


@pytest.mark.parametrize(
    ("local", "delimiters", "expected"),
    [
        pytest.param("user+ext", "+", ("user", "+ext"), id="plus"),
        pytest.param("a+b+c", "+", ("a", "+b+c"), id="first-delimiter"),
        pytest.param("a-b+c", "+-", ("a", "-b+c"), id="delimiter-set"),
        pytest.param("+ext", "+", None, id="empty-localpart"),
        pytest.param("user", "+", None, id="no-delimiter"),
        pytest.param("user+ext", "", None, id="extensions-off"),
        # The reserved names are never split, which matters when "-" is a delimiter;
        # postmaster+x is an ordinary local part with an extension.
        pytest.param("postmaster+x", "+", ("postmaster", "+x"), id="postmaster-ext"),
        pytest.param("Mailer-Daemon", "-", None, id="mailer-daemon"),
        pytest.param("double-bounce", "-", None, id="double-bounce"),
        pytest.param("some-body", "-", ("some", "-body"), id="dash-delimiter"),
        pytest.param("owner-list+x", "+", ("owner-list", "+x"), id="owner-with-plus"),
        pytest.param("owner-list", "-", None, id="owner-special"),
        pytest.param("list-request", "-", None, id="request-special"),
        pytest.param("user+", "+", ("user", "+"), id="empty-extension"),
    ],
)
def test_split_extension(local: str, delimiters: str, expected: tuple[str, str] | None) -> None:
    assert split_extension(local, delimiters) == expected


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        pytest.param(
            "user+ext@d.test",
            [Variant("user+ext@d.test"), Variant("user@d.test", "+ext"), Variant("@d.test")],
            id="extension",
        ),
        pytest.param("user@d.test", [Variant("user@d.test"), Variant("@d.test")], id="plain"),
        pytest.param("@d.test", [Variant("@d.test")], id="catch-all-key"),
        pytest.param("user+x", [Variant("user+x"), Variant("user", "+x")], id="no-domain"),
        pytest.param("a@b@d.test", [Variant("a@b@d.test"), Variant("@d.test")], id="last-at"),
    ],
)
def test_address_variants(key: str, expected: list[Variant]) -> None:
    assert address_variants(key, "+") == expected


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        pytest.param(
            "u+x@a.b.test",
            ["u+x@a.b.test", "u@a.b.test", "a.b.test", ".b.test", ".test", "*"],
            id="address",
        ),
        pytest.param("a.b.test", ["a.b.test", ".b.test", ".test", "*"], id="domain"),
        pytest.param("*", ["*"], id="wildcard"),
        pytest.param("u@test", ["u@test", "test", "*"], id="single-label"),
    ],
)
def test_transport_variants(key: str, expected: list[str]) -> None:
    assert transport_variants(key, "+") == expected


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        pytest.param([("a",)], "a", id="one"),
        pytest.param([("a", "b"), ("c", "d")], "a,b,c,d", id="columns-and-rows"),
        pytest.param([(None,), ("x@y, z@w",), ("",), (5,)], "x@y, z@w,5", id="null-empty-int"),
        pytest.param([(None,), ("",)], None, id="nothing-left"),
        pytest.param([], None, id="no-rows"),
        pytest.param([(b"bytes",)], "bytes", id="bytes"),
    ],
)
def test_join_rows(rows: list[tuple[object, ...]], expected: str | None) -> None:
    assert join_rows(rows) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("a@x.test", "a+e@x.test", id="one"),
        pytest.param("a@x.test, b@y.test", "a+e@x.test,b+e@y.test", id="list-with-space"),
        pytest.param("local", "local+e", id="no-domain"),
        pytest.param("a@x.test,,", "a+e@x.test", id="empty-items"),
    ],
)
def test_add_extension(value: str, expected: str) -> None:
    assert add_extension(value, "+e") == expected


async def test_search_map_stops_at_first_value() -> None:
    source = FakeSource({"u@d.test": "d.test/u/", "@d.test": "catchall/"})
    found = await SearchMap(source, lambda k: [v.key for v in address_variants(k, "+")]).lookup("u+x@d.test")
    assert found == "d.test/u/"
    assert source.asked == ["u+x@d.test", "u@d.test"]


async def test_exact_map_asks_only_the_key() -> None:
    source = FakeSource({"@d.test": "x"})
    assert await ExactMap(source).lookup("u@d.test") is None
    assert source.asked == ["u@d.test"]


async def test_aliases_try_both_tables_per_key_before_the_catch_all() -> None:
    """The reason email2email exists: a real mailbox wins over the @domain catch-all."""
    tables = FakeSource({"@d.test": "catch@d.test"}, {"real@d.test": "real@d.test"})
    aliases = AliasMap(tables, 2, "+", propagate=True)
    assert await aliases.lookup("real@d.test") == "real@d.test"
    assert tables.asked == ["real@d.test", "real@d.test"]  # forwardings, then email2email
    tables.asked.clear()
    assert await aliases.lookup("other@d.test") == "catch@d.test"
    assert tables.asked == ["other@d.test", "other@d.test", "@d.test"]


async def test_aliases_propagate_the_extension_of_a_stripped_match() -> None:
    forwardings = FakeSource({"info@d.test": "a@x.test, b@y.test", "@d.test": "catch@d.test"}, {})
    aliases = AliasMap(forwardings, 2, "+", propagate=True)
    assert await aliases.lookup("info+sales@d.test") == "a+sales@x.test,b+sales@y.test"
    # A catch-all match carries no extension, as Postfix does.
    assert await aliases.lookup("who+sales@d.test") == "catch@d.test"


async def test_aliases_full_key_match_is_returned_as_is() -> None:
    forwardings = FakeSource({"list+admin@d.test": "a@x.test, b@y.test"}, {})
    aliases = AliasMap(forwardings, 2, "+", propagate=True)
    assert await aliases.lookup("list+admin@d.test") == "a@x.test, b@y.test"


async def test_aliases_without_propagation() -> None:
    forwardings = FakeSource({"info@d.test": "a@x.test"}, {})
    aliases = AliasMap(forwardings, 2, "+", propagate=False)
    assert await aliases.lookup("info+sales@d.test") == "a@x.test"


class Recording:
    """A backend that records each statement and answers from a list of row sets."""

    dialect = SQLITE

    def __init__(self, *answers: list[Row] | BackendError) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, tuple[str, ...], str | None]] = []

    async def fetch(self, sql: str, params: Sequence[str], lane: str | None = None) -> list[Row]:
        self.calls.append((sql, tuple(params), lane))
        answer = self.answers.pop(0) if self.answers else []
        if isinstance(answer, BackendError):
            raise answer
        return answer

    async def close(self) -> None:
        pass


async def test_query_keys_are_case_folded_as_postfix_folds_them() -> None:
    backend = Recording()
    await ExactMap(Queries("domains", ["SELECT 1 FROM t WHERE k='%s'"], backend)).lookup("JOSÉ@STRAßE.TEST")
    assert [params for _, params, _ in backend.calls] == [("josé@strasse.test",)]


async def test_a_search_order_is_one_statement_with_the_keys_bound() -> None:
    backend = Recording([(2, "catchall/"), (1, "d.test/u/")])
    source = Queries("mailboxes", ["SELECT v FROM t WHERE k='%s'"], backend)
    found = await SearchMap(source, lambda k: [v.key for v in address_variants(k, "+")]).lookup("U+x@d.test")
    assert found == "d.test/u/"  # position 1 (u@d.test) comes before 2 (@d.test), whatever the row order
    [(sql, params, lane)] = backend.calls
    assert params == ("u+x@d.test", "u@d.test", "@d.test")
    assert lane == "mailboxes"
    assert "d.test" not in sql
    assert sql == (
        "SELECT 0 AS mailmapd_position, q.* FROM (\nSELECT v FROM t WHERE k=?\n) AS q\nUNION ALL\n"
        "SELECT 1 AS mailmapd_position, q.* FROM (\nSELECT v FROM t WHERE k=?\n) AS q\nUNION ALL\n"
        "SELECT 2 AS mailmapd_position, q.* FROM (\nSELECT v FROM t WHERE k=?\n) AS q"
    )


async def test_aliases_ask_each_table_in_one_statement_and_keep_the_extension_of_the_key_found() -> None:
    """Two templates, two statements sent at once: a UNION of different templates would give
    their columns one type and could change values."""
    backend = Recording([(4, "catch@x.test")], [(3, "a@x.test")])  # forwardings, then email2email
    source = Queries("aliases", ["SELECT f FROM fw WHERE s='%s'", "SELECT e FROM ee WHERE e='%s'"], backend)
    # Position 3 (email2email, info@d.test) comes before 4 (forwardings, @d.test).
    assert await AliasMap(source, 2, "+", propagate=True).lookup("info+sales@d.test") == "a+sales@x.test"
    [(forwardings, fw_params, _), (email2email, ee_params, _)] = backend.calls
    assert fw_params == ee_params == ("info+sales@d.test", "info@d.test", "@d.test")
    assert forwardings.count("FROM fw") == 3
    assert "FROM ee" not in forwardings
    assert email2email.count("FROM ee") == 3
    assert [f"SELECT {n} AS" in email2email for n in range(6)] == [False, True, False, True, False, True]


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        pytest.param([], None, id="no-rows"),
        pytest.param([(0, None), (1, "x")], (1, "x"), id="null-is-no-value"),
        pytest.param([(1, "b"), (0, ""), (1, "c"), (2, "d")], (1, "b,c"), id="all-rows-of-a-position"),
        pytest.param([(2, "late"), (0, "a", None, "b")], (0, "a,b"), id="lowest-position-wins"),
    ],
)
def test_first_value(rows: list[Row], expected: tuple[int, str] | None) -> None:
    assert first_value(rows) == expected


def test_combine_ends_a_trailing_comment_before_the_next_part() -> None:
    sql, params = combine([(0, "SELECT a FROM t WHERE k=? -- note", ("x",)), (4, "SELECT b FROM u # note", ())])
    assert params == ["x"]
    assert "-- note\n) AS q\nUNION ALL\nSELECT 4 AS mailmapd_position" in sql
    assert sql.endswith("# note\n) AS q")


async def test_one_key_is_asked_as_its_own_query() -> None:
    backend = Recording([("d.test",)])
    assert await ExactMap(Queries("domains", ["SELECT d FROM t WHERE d='%s'"], backend)).lookup("d.test") == "d.test"
    assert backend.calls == [("SELECT d FROM t WHERE d=?", ("d.test",), "domains")]


async def test_keys_that_cannot_fill_the_template_are_left_out_of_the_statement() -> None:
    backend = Recording([("x",)])
    source = Queries("mailboxes", ["SELECT v FROM t WHERE u='%u' AND d='%d'"], backend)
    # "@d.test" has an empty local part: %u cannot be filled, so only u@d.test is asked.
    assert await SearchMap(source, lambda k: [v.key for v in address_variants(k, "+")]).lookup("u@d.test") == "x"
    assert backend.calls == [("SELECT v FROM t WHERE u=? AND d=?", ("u", "d.test"), "mailboxes")]


async def test_a_key_left_out_keeps_the_positions_of_the_others() -> None:
    """forwardings by %u cannot ask @d.test (position 2): it asks u@d.test alone, as a plain
    query whose rows are tagged here; email2email asks positions 1 and 3 in one statement."""
    backend = Recording([], [(3, "catch@x.test")])
    source = Queries("aliases", ["SELECT f FROM fw WHERE u='%u'", "SELECT e FROM ee WHERE e='%s'"], backend)
    assert await AliasMap(source, 2, "+", propagate=True).lookup("u@d.test") == "catch@x.test"
    [(forwardings, fw_params, _), (email2email, ee_params, _)] = backend.calls
    assert (forwardings, fw_params) == ("SELECT f FROM fw WHERE u=?", ("u",))
    assert ee_params == ("u@d.test", "@d.test")
    assert "SELECT 1 AS mailmapd_position" in email2email
    assert "SELECT 3 AS mailmapd_position" in email2email


async def test_a_plain_query_answers_at_its_own_position() -> None:
    backend = Recording([("fw@x.test",)], [(1, "ee@x.test")])
    source = Queries("aliases", ["SELECT f FROM fw WHERE u='%u'", "SELECT e FROM ee WHERE e='%s'"], backend)
    # forwardings' only part is position 0 (u@d.test): it wins over email2email's position 1.
    assert await AliasMap(source, 2, "+", propagate=True).lookup("u@d.test") == "fw@x.test"


async def test_a_non_ascii_key_is_asked_one_key_at_a_time() -> None:
    """A column that cannot hold the key's characters fails the statement it is in; @domain
    must still be asked on its own."""
    backend = Recording([], [("catchall/",)])
    source = Queries("mailboxes", ["SELECT v FROM t WHERE k='%s'"], backend)
    assert await SearchMap(source, lambda k: [v.key for v in address_variants(k, "+")]).lookup("jü@d.test") == (
        "catchall/"
    )
    assert [params for _, params, _ in backend.calls] == [("jü@d.test",), ("@d.test",)]


async def test_templates_that_cannot_be_combined_are_asked_one_by_one_from_then_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Refused, every key answers alone, refused again: the combination is what fails."""
    refused = BackendError("query", 'sqlite: near ";": syntax error')
    backend = Recording(refused, [], [("catchall/",)], refused, [("u/",)])
    source = Queries("mailboxes", ["SELECT v FROM t WHERE k='%s';"], backend)
    search = SearchMap(source, lambda k: [v.key for v in address_variants(k, "+")])
    with caplog.at_level(logging.INFO, logger="mailmapd.maps"):
        assert await search.lookup("u@d.test") == "catchall/"
        assert await search.lookup("u@d.test") == "u/"
    assert [len(params) for _, params, _ in backend.calls] == [2, 1, 1, 2, 1]
    message = 'map mailboxes: its queries cannot run as one statement (sqlite: near ";": syntax error)'
    assert [r.getMessage() for r in caplog.records] == [message + "; asking one key at a time"]


async def test_a_query_that_fails_alone_too_raises_and_keeps_combining() -> None:
    """A missing table is the query's fault, not the combination's: the error is the lookup's,
    and the next lookup is combined again."""
    missing = BackendError("query", "no such table: t")
    backend = Recording(missing, missing, [(0, "u/")])
    search = SearchMap(Queries("mailboxes", ["SELECT v FROM t WHERE k='%s'"], backend), lambda k: [k, "@d.test"])
    with pytest.raises(BackendError, match="no such table"):
        await search.lookup("u@d.test")
    assert await search.lookup("u@d.test") == "u/"
    assert [len(params) for _, params, _ in backend.calls] == [2, 1, 2]


async def test_combine_queries_false_asks_one_key_at_a_time() -> None:
    cfg = make_config("sqlite:///unused.db", lookup={"combine_queries": False})
    backend = Recording([], [], [("catchall/",)])
    assert await build_maps(cfg, backend)["mailboxes"].lookup("u+x@d.test") == "catchall/"
    assert [params for _, params, _ in backend.calls] == [("u+x@d.test",), ("u@d.test",), ("@d.test",)]
    assert all("UNION" not in sql for sql, _, _ in backend.calls)


async def test_a_database_outage_is_not_taken_for_a_template_that_cannot_be_combined() -> None:
    backend = Recording(BackendError("connect", "no database host answered"), [(0, "u/")])
    search = SearchMap(Queries("mailboxes", ["SELECT v FROM t WHERE k='%s'"], backend), lambda k: [k, "@d.test"])
    with pytest.raises(BackendError, match="no database host"):
        await search.lookup("u@d.test")
    assert await search.lookup("u@d.test") == "u/"
    assert [len(params) for _, params, _ in backend.calls] == [2, 2]


async def test_a_passing_error_leaves_combining_on(caplog: pytest.LogCaptureFixture) -> None:
    """A statement killed or locked once: the keys answer alone, the combination works the
    second time, and the next lookup is combined."""
    killed = BackendError("query", "(1317) Query execution was interrupted")
    backend = Recording(killed, [], [("catchall/",)], [(1, "catchall/")], [(0, "u/")])
    search = SearchMap(Queries("mailboxes", ["SELECT v FROM t WHERE k='%s'"], backend), lambda k: [k, "@d.test"])
    with caplog.at_level(logging.INFO, logger="mailmapd.maps"):
        assert await search.lookup("u@d.test") == "catchall/"
        assert await search.lookup("u@d.test") == "u/"
    assert [len(params) for _, params, _ in backend.calls] == [2, 1, 1, 2, 2]
    assert not caplog.records


async def test_a_broken_later_table_answers_as_one_by_one_and_leaves_combining_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """email2email's table is missing. One by one, Postfix answers a key found in forwardings
    first and never asks email2email; so does mailmapd, and keeps combining."""
    missing = BackendError("query", "no such table: ee")
    backend = Recording(
        [(0, "a@x.test")], missing,  # the two statements, at once
        [("a@x.test",)], missing,  # one by one: forwardings answers, then email2email fails
        [(0, "a@x.test")], missing,  # the next lookup: combined again
        [("a@x.test",)], missing,
    )  # fmt: skip
    source = Queries("aliases", ["SELECT f FROM fw WHERE s='%s'", "SELECT e FROM ee WHERE e='%s'"], backend)
    aliases = AliasMap(source, 2, "+", propagate=True)
    with caplog.at_level(logging.INFO, logger="mailmapd.maps"):
        assert await aliases.lookup("info@d.test") == "a@x.test"
        assert await aliases.lookup("info@d.test") == "a@x.test"
    assert [len(params) for _, params, _ in backend.calls] == [2, 2, 1, 1, 2, 2, 1, 1]
    assert not caplog.records


async def test_concurrent_lookups_that_find_the_combination_refused_say_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Refusing:
        dialect = SQLITE

        async def fetch(self, sql: str, params: Sequence[str], lane: str | None = None) -> list[Row]:
            await asyncio.sleep(0)
            if "UNION ALL" in sql:
                raise BackendError("query", "syntax error")
            return [("catchall/",)] if params[0] == "@d.test" else []

        async def close(self) -> None:
            pass

    search = SearchMap(Queries("mailboxes", ["SELECT v FROM t WHERE k='%s'"], Refusing()), lambda k: [k, "@d.test"])
    with caplog.at_level(logging.INFO, logger="mailmapd.maps"):
        answers = await asyncio.gather(*(search.lookup(f"u{i}@d.test") for i in range(5)))
    assert answers == ["catchall/"] * 5
    assert len(caplog.records) == 1


async def test_a_template_with_order_by_is_asked_one_key_at_a_time() -> None:
    """MariaDB drops an ORDER BY without LIMIT inside a derived table."""
    backend = Recording([], [("catchall/",)])
    ordered = "SELECT v FROM t WHERE k='%s' ORDER BY prio"
    assert await SearchMap(Queries("mailboxes", [ordered], backend), lambda k: [k, "@d.test"]).lookup("u@d.test") == (
        "catchall/"
    )
    assert [params for _, params, _ in backend.calls] == [("u@d.test",), ("@d.test",)]


async def test_propagated_extension_keeps_its_case() -> None:
    """Postfix strips the extension from the address as sent and folds only the query key."""
    forwardings = FakeSource({"INFO@d.test": "a@x.test"}, {})
    aliases = AliasMap(forwardings, 2, "+", propagate=True)
    # FakeSource does no folding: the variant reaching it keeps the sender's case.
    assert await aliases.lookup("INFO+Sales@d.test") == "a+Sales@x.test"
