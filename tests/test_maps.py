"""The maps' search orders and value assembly, against fake sources."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from mailmapd.maps import (
    AliasMap,
    ExactMap,
    Query,
    SearchMap,
    Variant,
    add_extension,
    address_variants,
    join_rows,
    split_extension,
    transport_variants,
)
from mailmapd.sqltemplate import SQLITE


class FakeSource:
    """A table as a dict; records every key it is asked, in order."""

    def __init__(self, rows: dict[str, str]) -> None:
        self.rows = rows
        self.asked: list[str] = []

    async def value(self, key: str) -> str | None:
        self.asked.append(key)
        return self.rows.get(key)


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
    forwardings = FakeSource({"@d.test": "catch@d.test"})
    email2email = FakeSource({"real@d.test": "real@d.test"})
    aliases = AliasMap([forwardings, email2email], "+", propagate=True)
    assert await aliases.lookup("real@d.test") == "real@d.test"
    assert forwardings.asked == ["real@d.test"]
    assert await aliases.lookup("other@d.test") == "catch@d.test"


async def test_aliases_propagate_the_extension_of_a_stripped_match() -> None:
    forwardings = FakeSource({"info@d.test": "a@x.test, b@y.test", "@d.test": "catch@d.test"})
    aliases = AliasMap([forwardings, FakeSource({})], "+", propagate=True)
    assert await aliases.lookup("info+sales@d.test") == "a+sales@x.test,b+sales@y.test"
    # A catch-all match carries no extension, as Postfix does.
    assert await aliases.lookup("who+sales@d.test") == "catch@d.test"


async def test_aliases_full_key_match_is_returned_as_is() -> None:
    forwardings = FakeSource({"list+admin@d.test": "a@x.test, b@y.test"})
    aliases = AliasMap([forwardings, FakeSource({})], "+", propagate=True)
    assert await aliases.lookup("list+admin@d.test") == "a@x.test, b@y.test"


async def test_aliases_without_propagation() -> None:
    forwardings = FakeSource({"info@d.test": "a@x.test"})
    aliases = AliasMap([forwardings, FakeSource({})], "+", propagate=False)
    assert await aliases.lookup("info+sales@d.test") == "a@x.test"


async def test_query_keys_are_case_folded_as_postfix_folds_them() -> None:
    class Recording:
        dialect = SQLITE

        def __init__(self) -> None:
            self.params: list[tuple[str, ...]] = []

        async def fetch(self, sql: str, params: Sequence[str]) -> list[tuple[object, ...]]:
            self.params.append(tuple(params))
            return []

        async def close(self) -> None:
            pass

    backend = Recording()
    await ExactMap(Query("SELECT 1 FROM t WHERE k='%s'", backend)).lookup("JOSÉ@STRAßE.TEST")
    assert backend.params == [("josé@strasse.test",)]


async def test_propagated_extension_keeps_its_case() -> None:
    """Postfix strips the extension from the address as sent and folds only the query key."""
    forwardings = FakeSource({"info@d.test": "a@x.test"})
    aliases = AliasMap([forwardings, FakeSource({})], "+", propagate=True)
    # FakeSource does no folding: the variant reaching it keeps the sender's case.
    forwardings.rows["INFO@d.test"] = "a@x.test"
    assert await aliases.lookup("INFO+Sales@d.test") == "a+Sales@x.test"
