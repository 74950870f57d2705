"""The text of a source's query: its ``:name`` parameters bound in each driver's style, and
the check that it is a single SELECT. Pure functions over strings; no database here."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Literal

Dialect = Literal["sqlite", "postgresql", "mysql"]
SCHEMES: dict[str, Dialect] = {
    "sqlite": "sqlite",
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "mysql": "mysql",  # MariaDB too: same protocol, same driver
}

# What a parameter may never be found inside: string literals, quoted names, comments and
# PostgreSQL's `::` casts. MySQL escapes quotes with a backslash and has `#` comments;
# PostgreSQL has $tag$ ... $tag$ strings. An unclosed quote is left for the database to report.
_COMMON = r"--[^\n]*|/\*.*?\*/|::|`(?:[^`]|``)*`"
_SKIPPED: dict[Dialect, str] = {
    "sqlite": r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"",
    "postgresql": r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\$(?P<tag>[A-Za-z_]\w*|)\$.*?\$(?P=tag)\$",
    "mysql": r"'(?:[^'\\]|\\.|'')*'|\"(?:[^\"\\]|\\.|\"\")*\"|\#[^\n]*",
}
# `:name` not glued to a word before it, so `a[lo:hi]` and `x::int` are left alone.
_PARAMETER = r"(?<![\w:]):(?P<name>[A-Za-z_]\w*)"
_SCANNERS = {
    dialect: re.compile(rf"(?P<skip>{skipped}|{_COMMON})|{_PARAMETER}", re.S)
    for dialect, skipped in _SKIPPED.items()
}


def dialect_of(url: str) -> Dialect | None:
    """The SQL dialect a source URL speaks, or None for a scheme the relay does not read."""
    scheme, sep, _ = url.partition("://")
    return SCHEMES.get(scheme.lower()) if sep else None


def _pieces(query: str, dialect: Dialect) -> Iterator[tuple[str, str]]:
    """``(kind, text)`` in order: kind is "code", "skip" (literal or comment) or "param"."""
    at = 0
    for match in _SCANNERS[dialect].finditer(query):
        yield "code", query[at : match.start()]
        if match["name"] is not None:
            yield "param", match["name"]
        else:
            yield "skip", match[0]
        at = match.end()
    yield "code", query[at:]


def parameter_names(query: str, dialect: Dialect) -> set[str]:
    """The ``:name`` parameters a query uses, for check-config to compare with what it gets."""
    return {text for kind, text in _pieces(query, dialect) if kind == "param"}


def bind(query: str, params: Mapping[str, object], dialect: Dialect) -> tuple[str, list[object]]:
    """``query`` with each ``:name`` made the driver's positional placeholder, and the values
    in order. A list or tuple value becomes one placeholder per item (``IN (:players)``); an
    empty one becomes NULL, which matches nothing. ``ValueError`` names a missing parameter."""
    out: list[str] = []
    values: list[object] = []
    for kind, text in _pieces(query, dialect):
        if kind != "param":
            # pymysql formats the whole text with %, so a literal % (LIKE 'a%') is doubled.
            out.append(text.replace("%", "%%") if dialect == "mysql" else text)
            continue
        if text not in params:
            given = ", ".join(f":{name}" for name in sorted(params)) or "none"
            raise ValueError(f"uses :{text}, which the relay does not give (it gives {given})")
        value = params[text]
        items = list(value) if isinstance(value, list | tuple) else [value]
        marks = []
        for item in items:
            values.append(item)
            marks.append({"sqlite": "?", "postgresql": f"${len(values)}", "mysql": "%s"}[dialect])
        out.append(", ".join(marks) or "NULL")
    return "".join(out), values


_LOCKS = re.compile(
    r"\bFOR\s+(NO\s+KEY\s+)?(UPDATE|SHARE|KEY\s+SHARE)\b|\bLOCK\s+IN\s+SHARE\s+MODE\b", re.I
)
_WRITES = re.compile(r"\b(INSERT|UPDATE|DELETE|MERGE)\b", re.I)


def single_select(query: str, dialect: Dialect = "mysql") -> str | None:
    """Why ``query`` is not a single SELECT, or None when it is one.

    A first line of defence for check-config, and only that: a SELECT can still call a
    function that writes. What keeps the game's data safe is the read-only transaction every
    poll runs in, and a database user granted SELECT only.
    """
    code = "".join(
        " " if kind == "skip" else (":p" if kind == "param" else text)
        for kind, text in _pieces(query, dialect)
    )
    code = re.sub(r"[\s;]+$", "", code).strip()
    if not code:
        return "it is empty"
    if ";" in code:
        return "it holds several statements (a ';' before its end)"
    first = re.match(r"[(\s]*(\w+)", code)
    word = first[1].upper() if first else code[:20]
    if word not in ("SELECT", "WITH"):
        return f"it starts with {word}, not SELECT or WITH"
    if re.search(r"\bINTO\b", code, re.I):
        return "it has INTO, which writes its result to a table, a file or a variable"
    if locks := _LOCKS.search(code):
        return f"it locks the rows it reads ({' '.join(locks[0].upper().split())})"
    if writes := _WRITES.search(code):
        return f"it contains {writes[1].upper()}, which writes"
    return None
