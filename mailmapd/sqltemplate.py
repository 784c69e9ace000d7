"""mysql_table(5) query templates, run as bound parameters.

Postfix pastes the SQL-quoted key into the query text: ``WHERE email='%s'``. mailmapd keeps
the same templates (so existing .cf queries carry over unchanged) but never pastes: each
expansion becomes a bound parameter. A quoted literal that is exactly one expansion
(``'%s'``) becomes a bare placeholder; a literal mixing text and expansions
(``'%u@%d'``) becomes a concatenation of its pieces. A key like ``x' OR '1'='1`` is then
just a key.

The expansion rules are Postfix's (src/global/db_common.c ``db_common_expand``): ``%%`` a
percent sign, ``%s`` the key, ``%u`` its local part (the whole key when it has no ``@``),
``%d`` its domain, ``%1``..``%9`` domain labels from the right; the upper-case ``%S %U %D``
equal the lower-case ones in a query. A key that cannot fill the template (``%d`` with no
``@``, ``%u`` with an empty local part, too few labels, an empty key) is not looked up at
all: the answer is "not found" and no query is sent.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass


class TemplateError(ValueError):
    """A query template Postfix would refuse (an unknown ``%`` sequence, an open quote)."""


@dataclass(frozen=True, slots=True)
class Dialect:
    """How a backend spells a bound parameter, a literal percent and a concatenation."""

    name: str
    placeholder: str
    percent: str
    concat_open: str
    concat_sep: str
    concat_close: str

    def concat(self, parts: Sequence[str]) -> str:
        return self.concat_open + self.concat_sep.join(parts) + self.concat_close


# PyMySQL's "format" paramstyle: a literal percent sign must be doubled.
MYSQL = Dialect("mysql", "%s", "%%", "CONCAT(", ", ", ")")
SQLITE = Dialect("sqlite", "?", "%", "(", " || ", ")")

_EXPANSIONS = frozenset("sudSUD123456789")
_ORDER_BY = re.compile(r"\border\s+by\b", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class _Text:
    text: str


@dataclass(frozen=True, slots=True)
class _Literal:
    """A quoted SQL string literal, as pieces of raw text and expansion letters."""

    quote: str
    pieces: tuple[_Text | str, ...]


@dataclass(frozen=True, slots=True)
class CompiledQuery:
    """SQL for one dialect plus what each placeholder receives."""

    sql: str
    slots: tuple[str, ...]
    needs_domain: bool
    needs_user: bool
    labels: int

    def params(self, key: str) -> tuple[str, ...] | None:
        """The bound parameters for ``key``, or None when the query must not be sent."""
        if not key:
            return None
        at = key.rfind("@")
        domain = key[at + 1 :] if at >= 0 else None
        if self.needs_domain and not domain:
            return None
        if self.needs_user and at == 0:
            return None
        labels: list[str] = []
        if self.labels:
            assert domain is not None  # needs_domain is set whenever labels is
            # Postfix splits the domain into its non-empty labels (argv_split skips empty
            # tokens), so "example..test" has the labels example and test.
            labels = [label for label in domain.split(".") if label]
            if len(labels) < self.labels:
                return None
        local = key[:at] if at >= 0 else key
        values: list[str] = []
        for slot in self.slots:
            match slot:
                case "s" | "S":
                    values.append(key)
                case "u" | "U":
                    values.append(local)
                case "d" | "D":
                    assert domain is not None
                    values.append(domain)
                case _:
                    values.append(labels[-int(slot)])
        return tuple(values)


@dataclass(frozen=True, slots=True)
class QueryTemplate:
    text: str
    parts: tuple[_Text | _Literal | str, ...]

    @property
    def orders_rows(self) -> bool:
        """Whether the SQL outside quoted literals says ORDER BY."""
        return any(isinstance(part, _Text) and _ORDER_BY.search(part.text) for part in self.parts)

    @classmethod
    def parse(cls, text: str) -> QueryTemplate:
        """Split a template into SQL text, quoted literals and expansions."""
        parts: list[_Text | _Literal | str] = []
        buf: list[str] = []
        i, n = 0, len(text)

        def flush() -> None:
            if buf:
                parts.append(_Text("".join(buf)))
                buf.clear()

        while i < n:
            ch = text[i]
            if ch in "'\"":
                flush()
                literal, i = _parse_literal(text, i)
                parts.append(literal)
                continue
            if ch == "%":
                code = _expansion(text, i)
                if code == "%":
                    buf.append("%")
                else:
                    flush()
                    parts.append(code)
                i += 2
                continue
            buf.append(ch)
            i += 1
        flush()
        return cls(text, tuple(parts))

    def compile(self, dialect: Dialect) -> CompiledQuery:
        sql: list[str] = []
        slots: list[str] = []
        for part in self.parts:
            if isinstance(part, _Text):
                sql.append(part.text.replace("%", dialect.percent))
            elif isinstance(part, str):
                sql.append(dialect.placeholder)
                slots.append(part)
            else:
                sql.append(_compile_literal(part, dialect, slots))
        codes = "".join(slots)
        digits = [int(c) for c in codes if c.isdigit()]
        return CompiledQuery(
            sql="".join(sql),
            slots=tuple(slots),
            needs_domain=any(c in "dD" for c in codes) or bool(digits),
            needs_user=any(c in "uU" for c in codes),
            labels=max(digits, default=0),
        )


def _expansion(text: str, i: int) -> str:
    code = text[i + 1 : i + 2]
    if code == "%" or code in _EXPANSIONS:
        return code
    shown = text[i : i + 2] if code else "%"
    raise TemplateError(f"invalid expansion {shown!r} at offset {i} (use %s %u %d %1-%9 or %%)")


def _parse_literal(text: str, start: int) -> tuple[_Literal, int]:
    quote = text[start]
    pieces: list[_Text | str] = []
    buf: list[str] = []
    i, n = start + 1, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\" and i + 1 < n:
            if text[i + 1] == "%":
                if text[i + 2 : i + 3] != "%":
                    # Postfix would paste the key after the backslash, escaping its first
                    # character; a bound parameter cannot reproduce that. Refuse it plainly.
                    raise TemplateError(f"a backslash before the expansion at offset {i + 1} cannot be kept")
                buf.append(ch)  # "\%%": the backslash escapes the literal percent sign
                i += 1
                continue
            buf.append(text[i : i + 2])
            i += 2
            continue
        if ch == quote:
            if text[i + 1 : i + 2] == quote:  # a doubled quote stays inside the literal
                buf.append(quote * 2)
                i += 2
                continue
            if buf:
                pieces.append(_Text("".join(buf)))
            return _Literal(quote, tuple(pieces)), i + 1
        if ch == "%":
            code = _expansion(text, i)
            if code == "%":
                buf.append("%")
            else:
                if buf:
                    pieces.append(_Text("".join(buf)))
                    buf.clear()
                pieces.append(code)
            i += 2
            continue
        buf.append(ch)
        i += 1
    raise TemplateError(f"unterminated {quote} string starting at offset {start}")


def _compile_literal(literal: _Literal, dialect: Dialect, slots: list[str]) -> str:
    q = literal.quote
    if not any(isinstance(p, str) for p in literal.pieces):
        text = "".join(p.text for p in literal.pieces if isinstance(p, _Text))
        return q + text.replace("%", dialect.percent) + q
    out: list[str] = []
    for piece in literal.pieces:
        if isinstance(piece, str):
            out.append(dialect.placeholder)
            slots.append(piece)
        else:
            out.append(q + piece.text.replace("%", dialect.percent) + q)
    return out[0] if len(out) == 1 else dialect.concat(out)
