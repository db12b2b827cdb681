"""A small, explicit subset of the Kusto Query Language (KQL), parsed by a real grammar.

Why this exists: the emulator's Log Analytics endpoint must answer the collector's fixed query
templates exactly as Azure would, and must *reject* anything else with Azure's 400 error instead
of silently guessing. A real parser (lark, LALR) gives us both: precise acceptance of the subset
and syntax errors with a line/position, like Kusto's ``SYN0002``. Semantic checks (unknown
columns, comparing a string with a long, ...) raise ``SemanticError`` the way Kusto's ``SEM0100``
does, so a template bug shows up in tests against the emulator rather than in production.

Pure module: no server imports. Entry points:

- :func:`parse` -- query text to an AST (raises :class:`KqlError`).
- :func:`execute` -- run a query over named tables; returns a :class:`Result` whose ``rows`` is
  an iterator (``where``/``extend``/``project``/``take`` stream; ``summarize``/``order`` and
  ``count`` materialise).
- :func:`to_wire` -- a value to its Log Analytics JSON form for a column type.
- :func:`quote` -- a string to a KQL literal that round-trips for any input.

Supported subset (anything else raises :class:`KqlError`)::

    Table ('|' operator)*  [';']
    operator := where|filter expr
              | extend [name =] expr, ...
              | project [name =] expr, ...
              | project-away name, ...
              | summarize [ [name =] agg, ... ] [by [name =] expr, ...]
              | order|sort by expr [asc|desc] [nulls first|last], ...
              | take|limit N
              | count
    expr      := or / and / comparisons (== != < > <= >= =~ !~), [!]has[_cs], [!]contains[_cs],
                 [!]startswith[_cs], [!]endswith[_cs], [!]in[~] (...), [!]between (a .. b),
                 + - * / %, unary -, parentheses, member access x.a, x["a"], x[0],
                 function calls, literals
    literals  := 'str' "str" (backslash escapes) @'verbatim' @"verbatim", adjacent strings
                 concatenate, 42, 1.5, 1e3, true, false, 1d 2h 5m 30s 100ms 1tick,
                 datetime(2025-01-01T00:00:00Z), timespan(1h)
    scalar fns: ago now todatetime tostring toint tolong toreal todouble tobool parse_json
                todynamic isempty isnotempty isnull isnotnull not iff iif bin floor tolower
                toupper strlen strcat
    aggregates: count countif sum avg min max percentile percentiles dcount
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

__all__ = [
    "Column",
    "KqlError",
    "Result",
    "Table",
    "execute",
    "format_datetime",
    "parse",
    "parse_datetime",
    "quote",
    "to_wire",
]

# Log Analytics column types (the `type` of each response column).
STRING, LONG, INT, REAL, BOOL, DATETIME, TIMESPAN, DYNAMIC = (
    "string",
    "long",
    "int",
    "real",
    "bool",
    "datetime",
    "timespan",
    "dynamic",
)
NUMERIC = frozenset({LONG, INT, REAL})

_EPOCH_0001 = datetime(1, 1, 1, tzinfo=UTC)
_MAX_INT32 = 2**31 - 1
_MIN_INT32 = -(2**31)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class KqlError(Exception):
    """A query Kusto would refuse.

    ``kind`` is ``"SyntaxError"`` or ``"SemanticError"`` (the inner error code of Azure's
    ``BadArgumentError`` body); ``code`` the innermost Kusto code (``SYN0002`` / ``SEM0100``);
    ``line`` is 1-based and ``pos`` the 0-based column in that line, as Kusto reports them;
    ``offset`` the 0-based character offset in the whole query.
    """

    def __init__(
        self,
        message: str,
        *,
        kind: str = "SyntaxError",
        code: str | None = None,
        line: int = 1,
        pos: int = 0,
        offset: int = 0,
        token: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.code = code or ("SYN0002" if kind == "SyntaxError" else "SEM0100")
        self.line = line
        self.pos = pos
        self.offset = offset
        self.token = token

    def __str__(self) -> str:
        return f"{self.message} (line {self.line}, pos {self.pos})"


@dataclass(frozen=True)
class _Pos:
    line: int = 1
    col: int = 0  # 0-based
    offset: int = 0


def _semantic(message: str, pos: _Pos | None, token: str = "") -> KqlError:
    p = pos or _Pos()
    return KqlError(
        message, kind="SemanticError", line=p.line, pos=p.col, offset=p.offset, token=token
    )


# --------------------------------------------------------------------------------------------
# Grammar
# --------------------------------------------------------------------------------------------

_TIMESPAN_UNITS: dict[str, timedelta] = {}
for _names, _delta in (
    (("d", "day", "days"), timedelta(days=1)),
    (("h", "hr", "hrs", "hour", "hours"), timedelta(hours=1)),
    (("m", "min", "minute", "minutes"), timedelta(minutes=1)),
    (("s", "sec", "second", "seconds"), timedelta(seconds=1)),
    (("ms", "milli", "millis", "millisecond", "milliseconds"), timedelta(milliseconds=1)),
    (("micro", "micros", "microsec", "microsecond", "microseconds"), timedelta(microseconds=1)),
    (("tick", "ticks"), timedelta(microseconds=0.1)),
):
    for _n in _names:
        _TIMESPAN_UNITS[_n] = _delta


_GRAMMAR = r"""
start: query [";"]
query: NAME pipe*
?pipe: "|" operator
?operator: where_op | extend_op | project_op | project_away_op | summarize_op
         | order_op | take_op | count_op

where_op: ("where" | "filter") expr
extend_op: "extend" named ("," named)*
project_op: "project" named ("," named)*
project_away_op: "project-away" NAME ("," NAME)*
summarize_op: "summarize" [named ("," named)*] [BY named ("," named)*]
order_op: ("order" | "sort") BY sort_key ("," sort_key)*
sort_key: expr [DIRECTION] [NULLS NULLS_POS]
take_op: ("take" | "limit") INT
count_op: "count"

named: NAME "=" expr  -> assign
     | expr           -> unnamed

?expr: or_expr
?or_expr: and_expr | or_expr "or" and_expr -> or_
?and_expr: cmp_expr | and_expr "and" cmp_expr -> and_
?cmp_expr: add_expr
         | add_expr CMP_OP add_expr                        -> compare
         | add_expr STR_OP add_expr                        -> strop
         | add_expr IN_OP "(" expr ("," expr)* ")"         -> in_
         | add_expr BETWEEN_OP "(" add_expr ".." add_expr ")" -> between
?add_expr: mul_expr | add_expr ADD_OP mul_expr -> arith
?mul_expr: unary | mul_expr MUL_OP unary -> arith
?unary: postfix | "-" unary -> neg
?postfix: atom
        | postfix "." NAME       -> member
        | postfix "[" expr "]"   -> index
?atom: literal
     | NAME                                  -> column
     | NAME "(" [expr ("," expr)*] ")"       -> call
     | "(" expr ")"

?literal: string_lit | INT -> int_lit | REAL -> real_lit | TIMESPAN -> timespan_lit
        | DATETIME -> datetime_lit | "true" -> true_lit | "false" -> false_lit
string_lit: STRING+

BY: "by"
NULLS: "nulls"
NULLS_POS: "first" | "last"
DIRECTION: "asc" | "desc"
CMP_OP: "==" | "!=" | "<=" | ">=" | "<" | ">" | "=~" | "!~"
STR_OP.2: /!?(?:has|contains|startswith|endswith)(?:_cs)?(?![A-Za-z0-9_])/
IN_OP.2: /!?in~?(?![A-Za-z0-9_])/
BETWEEN_OP.2: /!?between(?![A-Za-z0-9_])/
ADD_OP: "+" | "-"
MUL_OP: "*" | "/" | "%"

NAME: /[A-Za-z_][A-Za-z0-9_]*/
STRING: /@'[^'\n\r]*(?:''[^'\n\r]*)*'/
      | /@"[^"\n\r]*(?:""[^"\n\r]*)*"/
      | /'(?:[^'\\\n\r]|\\[^\n\r])*'/
      | /"(?:[^"\\\n\r]|\\[^\n\r])*"/
DATETIME.4: /datetime\([^()\n\r]*\)/
TIMESPAN.3: /[0-9]+(?:\.[0-9]+)?(?:@UNITS@)(?![A-Za-z0-9_])/
REAL.2: /[0-9]+\.[0-9]+(?:[eE][+-]?[0-9]+)?|[0-9]+[eE][+-]?[0-9]+/
INT: /[0-9]+/

COMMENT: /\/\/[^\n]*/
%import common.WS
%ignore WS
%ignore COMMENT
"""


@lru_cache(maxsize=1)
def _parser() -> Lark:
    # Longest unit names first, so "ms" is never read as "m" + "s".
    units = "|".join(sorted(_TIMESPAN_UNITS, key=len, reverse=True))
    return Lark(
        _GRAMMAR.replace("@UNITS@", units),
        parser="lalr",
        lexer="contextual",
        propagate_positions=True,
        maybe_placeholders=True,
    )


# --------------------------------------------------------------------------------------------
# AST
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expr:
    pos: _Pos = field(compare=False)


@dataclass(frozen=True)
class Lit(Expr):
    value: Any
    type: str


@dataclass(frozen=True)
class Col(Expr):
    name: str


@dataclass(frozen=True)
class Call(Expr):
    name: str
    args: tuple[Expr, ...]


@dataclass(frozen=True)
class BinOp(Expr):
    op: str
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Neg(Expr):
    operand: Expr


@dataclass(frozen=True)
class InList(Expr):
    op: str
    left: Expr
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class Between(Expr):
    negate: bool
    left: Expr
    low: Expr
    high: Expr


@dataclass(frozen=True)
class Member(Expr):
    target: Expr
    key: Expr  # a string or integer literal, or any expression for x[expr]


@dataclass(frozen=True)
class Named:
    name: str | None
    expr: Expr


@dataclass(frozen=True)
class SortKey:
    expr: Expr
    descending: bool
    nulls_first: bool


@dataclass(frozen=True)
class Op:
    kind: str  # where extend project project-away summarize order take count
    pos: _Pos
    items: tuple[Any, ...] = ()
    by: tuple[Named, ...] = ()
    predicate: Expr | None = None
    count: int = 0


@dataclass(frozen=True)
class Query:
    table: str
    table_pos: _Pos
    ops: tuple[Op, ...]


def _pos_of(item: Any) -> _Pos:
    if isinstance(item, Token):
        return _Pos(item.line or 1, (item.column or 1) - 1, item.start_pos or 0)
    if isinstance(item, Tree):
        meta = item.meta
        if not getattr(meta, "empty", True):
            return _Pos(meta.line, meta.column - 1, meta.start_pos)
    if isinstance(item, Expr):
        return item.pos
    return _Pos()


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"', "0": "\0"}


def _unquote(tok: Token) -> str:
    text = str(tok)
    if text.startswith("@"):
        quote_char = text[1]
        return text[2:-1].replace(quote_char * 2, quote_char)
    body = text[1:-1]
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt == "u" and re.fullmatch(r"[0-9A-Fa-f]{4}", body[i + 2 : i + 6]):
            out.append(chr(int(body[i + 2 : i + 6], 16)))
            i += 6
        else:
            p = _pos_of(tok)
            raise KqlError(
                f"Query could not be parsed at '\\{nxt}' on line [{p.line},{p.col + 1 + i}]",
                line=p.line,
                pos=p.col + 1 + i,
                offset=p.offset + 1 + i,
                token="\\" + nxt,
            )
    return "".join(out)


def _parse_timespan(text: str, pos: _Pos) -> timedelta:
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([A-Za-z]+)", text.strip())
    if not m or m.group(2) not in _TIMESPAN_UNITS:
        raise _semantic(f"Invalid timespan literal: '{text}'", pos, text)
    return _TIMESPAN_UNITS[m.group(2)] * float(m.group(1))


def parse_datetime(text: str) -> datetime | None:
    """Kusto's ISO-8601 datetime forms; naive values are UTC. None when unparseable."""
    s = text.strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"":
        s = s[1:-1].strip()
    m = re.fullmatch(
        r"(\d{4})-(\d{1,2})-(\d{1,2})"
        r"(?:[T ](\d{1,2}):(\d{2})(?::(\d{2})(?:\.(\d{1,7}))?)?)?"
        r"\s*(Z|[+-]\d{2}:?\d{2})?",
        s,
    )
    if not m:
        return None
    year, month, day, hh, mi, ss, frac, tz = m.groups()
    try:
        value = datetime(
            int(year),
            int(month),
            int(day),
            int(hh or 0),
            int(mi or 0),
            int(ss or 0),
            int((frac or "0").ljust(7, "0")[:6]),
            tzinfo=UTC,
        )
    except ValueError:
        return None
    if tz and tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        digits = tz[1:].replace(":", "")
        value -= sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    return value


@v_args(tree=True)
class _ToAst(Transformer):
    """lark tree -> the frozen dataclasses above (keeps source positions for errors)."""

    # ---- literals
    def string_lit(self, t: Tree) -> Lit:
        return Lit(_pos_of(t), "".join(_unquote(tok) for tok in t.children), STRING)

    def int_lit(self, t: Tree) -> Lit:
        return Lit(_pos_of(t), int(t.children[0]), LONG)

    def real_lit(self, t: Tree) -> Lit:
        return Lit(_pos_of(t), float(t.children[0]), REAL)

    def timespan_lit(self, t: Tree) -> Lit:
        p = _pos_of(t)
        return Lit(p, _parse_timespan(str(t.children[0]), p), TIMESPAN)

    def datetime_lit(self, t: Tree) -> Lit:
        tok = t.children[0]
        p = _pos_of(t)
        inner = str(tok)[len("datetime(") : -1]
        value = parse_datetime(inner)
        if value is None:
            raise KqlError(
                f"Query could not be parsed at '{tok}' on line [{p.line},{p.col}]",
                line=p.line,
                pos=p.col,
                offset=p.offset,
                token=str(tok),
            )
        return Lit(p, value, DATETIME)

    def true_lit(self, t: Tree) -> Lit:
        return Lit(_pos_of(t), True, BOOL)

    def false_lit(self, t: Tree) -> Lit:
        return Lit(_pos_of(t), False, BOOL)

    # ---- expressions
    def column(self, t: Tree) -> Col:
        return Col(_pos_of(t), str(t.children[0]))

    def call(self, t: Tree) -> Call:
        name, *args = t.children
        return Call(_pos_of(t), str(name), tuple(a for a in args if a is not None))

    def or_(self, t: Tree) -> BinOp:
        return BinOp(_pos_of(t), "or", t.children[0], t.children[1])

    def and_(self, t: Tree) -> BinOp:
        return BinOp(_pos_of(t), "and", t.children[0], t.children[1])

    def compare(self, t: Tree) -> BinOp:
        left, op, right = t.children
        return BinOp(_pos_of(op), str(op), left, right)

    def strop(self, t: Tree) -> BinOp:
        left, op, right = t.children
        return BinOp(_pos_of(op), str(op), left, right)

    def arith(self, t: Tree) -> BinOp:
        left, op, right = t.children
        return BinOp(_pos_of(op), str(op), left, right)

    def neg(self, t: Tree) -> Expr:
        (operand,) = t.children
        if isinstance(operand, Lit) and operand.type in (LONG, REAL, TIMESPAN):
            return Lit(_pos_of(t), -operand.value, operand.type)
        return Neg(_pos_of(t), operand)

    def in_(self, t: Tree) -> InList:
        left, op, *items = t.children
        return InList(_pos_of(op), str(op), left, tuple(items))

    def between(self, t: Tree) -> Between:
        left, op, low, high = t.children
        return Between(_pos_of(op), str(op).startswith("!"), left, low, high)

    def member(self, t: Tree) -> Member:
        target, name = t.children
        return Member(_pos_of(name), target, Lit(_pos_of(name), str(name), STRING))

    def index(self, t: Tree) -> Member:
        target, key = t.children
        return Member(_pos_of(key), target, key)

    # ---- operator arguments
    def assign(self, t: Tree) -> Named:
        return Named(str(t.children[0]), t.children[1])

    def unnamed(self, t: Tree) -> Named:
        return Named(None, t.children[0])

    def sort_key(self, t: Tree) -> SortKey:
        expr, direction, _nulls, nulls_pos = t.children
        descending = direction is None or str(direction) == "desc"
        nulls_first = (not descending) if nulls_pos is None else str(nulls_pos) == "first"
        return SortKey(expr, descending, nulls_first)

    # ---- operators
    def where_op(self, t: Tree) -> Op:
        return Op("where", _pos_of(t), predicate=t.children[0])

    def extend_op(self, t: Tree) -> Op:
        return Op("extend", _pos_of(t), items=tuple(t.children))

    def project_op(self, t: Tree) -> Op:
        return Op("project", _pos_of(t), items=tuple(t.children))

    def project_away_op(self, t: Tree) -> Op:
        return Op("project-away", _pos_of(t), items=tuple(t.children))

    def summarize_op(self, t: Tree) -> Op:
        aggs: list[Named] = []
        by: list[Named] = []
        target = aggs
        for child in t.children:
            if child is None:
                continue
            if isinstance(child, Token) and child.type == "BY":
                target = by
                continue
            target.append(child)
        return Op("summarize", _pos_of(t), items=tuple(aggs), by=tuple(by))

    def order_op(self, t: Tree) -> Op:
        keys = tuple(c for c in t.children if isinstance(c, SortKey))
        return Op("order", _pos_of(t), items=keys)

    def take_op(self, t: Tree) -> Op:
        return Op("take", _pos_of(t), count=int(t.children[0]))

    def count_op(self, t: Tree) -> Op:
        return Op("count", _pos_of(t))

    def query(self, t: Tree) -> Query:
        name, *ops = t.children
        return Query(str(name), _pos_of(name), tuple(ops))

    def start(self, t: Tree) -> Query:
        return t.children[0]


def _syntax_error(query: str, exc: UnexpectedInput) -> KqlError:
    line = getattr(exc, "line", 1) or 1
    column = getattr(exc, "column", 1) or 1
    offset = getattr(exc, "pos_in_stream", None)
    token = ""
    if isinstance(exc, UnexpectedToken):
        tok = exc.token
        if tok.type == "$END":
            token = "<EOF>"
            offset = len(query)
            before = query[:offset]
            line = before.count("\n") + 1
            column = offset - (before.rfind("\n") + 1) + 1
        else:
            token = str(tok)
            offset = tok.start_pos
    elif isinstance(exc, UnexpectedEOF):
        token = "<EOF>"
        offset = len(query)
    elif isinstance(exc, UnexpectedCharacters):
        rest = query[exc.pos_in_stream :]
        m = re.match(r"[A-Za-z0-9_]+|\S", rest)
        token = m.group(0) if m else rest[:1]
    pos = column - 1
    return KqlError(
        f"Query could not be parsed at '{token}' on line [{line},{pos}]",
        line=line,
        pos=pos,
        offset=offset or 0,
        token=token,
    )


def parse(query: str) -> Query:
    """Parse query text into a :class:`Query`; raise :class:`KqlError` (SyntaxError) if invalid."""
    if not query or not query.strip():
        raise KqlError("Query could not be parsed at '<EOF>' on line [1,0]", token="<EOF>")
    try:
        tree = _parser().parse(query)
    except UnexpectedInput as exc:
        raise _syntax_error(query, exc) from None
    try:
        return _ToAst().transform(tree)
    except Exception as exc:  # lark wraps transformer errors in VisitError
        inner = getattr(exc, "orig_exc", exc)
        if isinstance(inner, KqlError):
            raise inner from None
        raise


# --------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------


def format_datetime(value: datetime) -> str:
    """Kusto's ISO rendering: ``2025-01-01T00:00:00Z`` or 7-digit fractions ``...05.1230000Z``."""
    value = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    base = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        return f"{base}.{value.microsecond:06d}0Z"
    return base + "Z"


def _format_timespan(value: timedelta) -> str:
    ticks = round(value / timedelta(microseconds=1)) * 10
    sign = "-" if ticks < 0 else ""
    ticks = abs(ticks)
    days, rem = divmod(ticks, 864_000_000_000)
    hours, rem = divmod(rem, 36_000_000_000)
    minutes, rem = divmod(rem, 600_000_000)
    seconds, frac = divmod(rem, 10_000_000)
    text = f"{hours:02d}:{minutes:02d}:{seconds:02d}"
    if frac:
        text += f".{frac:07d}"
    if days:
        text = f"{days}.{text}"
    return sign + text


def _dynamic_to_text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_datetime(value)
    if isinstance(value, timedelta):
        return _format_timespan(value)
    raise TypeError(type(value).__name__)


def _tostring(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return format_datetime(value)
    if isinstance(value, timedelta):
        return _format_timespan(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return repr(value)
    if isinstance(value, (dict, list)):
        return _dynamic_to_text(value)
    return str(value)


def to_wire(value: Any, col_type: str) -> Any:
    """A Python value to its JSON form in a Log Analytics response for column type ``col_type``.

    datetimes become ISO strings ending in 'Z' (the SDK's ``Deserializer.deserialize_iso``
    parses them and truncates 7-digit fractions); dynamic values are JSON text; NaN/inf -> null.
    """
    if value is None:
        return None
    if col_type == DATETIME:
        return format_datetime(value)
    if col_type == TIMESPAN:
        return _format_timespan(value)
    if col_type == DYNAMIC:
        return _dynamic_to_text(value)
    if col_type == REAL:
        f = float(value)
        return None if math.isnan(f) or math.isinf(f) else f
    if col_type in (LONG, INT):
        return int(value)
    return value


def quote(value: str) -> str:
    """A KQL string literal for ``value`` that parses back to exactly ``value``.

    Single-quoted with backslash escapes; newlines/CR/tab escaped (raw ones are not allowed in
    a KQL literal). This is the escaping the collector must use for user input.
    """
    out = ["'"]
    for ch in value:
        if ch == "\\":
            out.append("\\\\")
        elif ch == "'":
            out.append("\\'")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        else:
            out.append(ch)
    out.append("'")
    return "".join(out)


# --------------------------------------------------------------------------------------------
# Compilation of scalar expressions: Expr -> (type, fn(row) -> value)
# --------------------------------------------------------------------------------------------

Row = Mapping[str, Any]
Fn = Callable[[Row], Any]


@dataclass
class _Ctx:
    schema: dict[str, str]
    now: datetime
    operator: str


def _const(value: Any) -> Fn:
    return lambda _r: value


def _is_dynamic_scalar_compatible(value: Any, t: str) -> bool:
    if value is None:
        return False
    if t == STRING:
        return isinstance(value, str)
    if t in NUMERIC:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t == BOOL:
        return isinstance(value, bool)
    return True


def _comparable(lt: str, rt: str) -> bool:
    if DYNAMIC in (lt, rt):
        return True
    if lt in NUMERIC and rt in NUMERIC:
        return True
    return lt == rt


def _to_long(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return None
        return int(value)
    if isinstance(value, str):
        s = value.strip()
        if re.fullmatch(r"[+-]?\d+", s):
            return int(s)
        try:
            f = float(s)
        except ValueError:
            return None
        return None if math.isnan(f) or math.isinf(f) else int(f)
    if isinstance(value, datetime):
        return (value - _EPOCH_0001) // timedelta(microseconds=1) * 10
    if isinstance(value, timedelta):
        return value // timedelta(microseconds=1) * 10
    return None


def _to_int(value: Any) -> int | None:
    v = _to_long(value)
    if v is None or v > _MAX_INT32 or v < _MIN_INT32:
        return None
    return v


def _to_real(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _to_bool(value: Any) -> bool | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value != 0
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("true", "1"):
            return True
        if low in ("false", "0"):
            return False
    return None


def _to_datetime(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        return parse_datetime(value)
    return None


def _parse_json(value: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        return value


def _has(hay: str, needle: str, case_sensitive: bool) -> bool:
    """Kusto `has`: needle matches whole terms (alphanumeric runs) of hay."""
    if not case_sensitive:
        hay, needle = hay.lower(), needle.lower()
    if needle == "":
        return True
    start = 0
    while True:
        i = hay.find(needle, start)
        if i < 0:
            return False
        before_ok = i == 0 or not hay[i - 1].isalnum() or not needle[0].isalnum()
        j = i + len(needle)
        after_ok = j == len(hay) or not hay[j].isalnum() or not needle[-1].isalnum()
        if before_ok and after_ok:
            return True
        start = i + 1


def _string_predicate(name: str) -> Callable[[str, str], bool]:
    cs = name.endswith("_cs")
    base = name[:-3] if cs else name
    if base == "has":
        return lambda a, b: _has(a, b, cs)
    if cs:
        if base == "contains":
            return lambda a, b: b in a
        if base == "startswith":
            return lambda a, b: a.startswith(b)
        return lambda a, b: a.endswith(b)
    if base == "contains":
        return lambda a, b: b.lower() in a.lower()
    if base == "startswith":
        return lambda a, b: a.lower().startswith(b.lower())
    return lambda a, b: a.lower().endswith(b.lower())


def _cmp_values(op: str, a: Any, b: Any) -> bool | None:
    if a is None or b is None:
        return None
    if isinstance(a, bool) != isinstance(b, bool) and op not in ("==", "!="):
        return None
    try:
        if op == "==":
            return a == b
        if op == "!=":
            return a != b
        if op == "<":
            return a < b
        if op == ">":
            return a > b
        if op == "<=":
            return a <= b
        if op == ">=":
            return a >= b
    except TypeError:
        return None
    raise AssertionError(op)


def _arith_type(op: str, lt: str, rt: str, pos: _Pos) -> str:
    if lt == DYNAMIC or rt == DYNAMIC:
        return DYNAMIC
    if lt in NUMERIC and rt in NUMERIC:
        if REAL in (lt, rt):
            return REAL
        return LONG if LONG in (lt, rt) else INT
    if op == "-" and lt == DATETIME and rt == DATETIME:
        return TIMESPAN
    if op in "+-" and lt == DATETIME and rt == TIMESPAN:
        return DATETIME
    if op == "+" and lt == TIMESPAN and rt == DATETIME:
        return DATETIME
    if op in "+-" and lt == TIMESPAN and rt == TIMESPAN:
        return TIMESPAN
    if op in "*/" and lt == TIMESPAN and rt in NUMERIC:
        return TIMESPAN
    if op == "*" and lt in NUMERIC and rt == TIMESPAN:
        return TIMESPAN
    if op == "/" and lt == TIMESPAN and rt == TIMESPAN:
        return REAL
    raise _semantic(f"Operator '{op}' cannot be applied to types {lt} and {rt}", pos, op)


def _arith(op: str, a: Any, b: Any, result_type: str) -> Any:
    if a is None or b is None:
        return None
    try:
        if result_type in (LONG, INT) and isinstance(a, int) and isinstance(b, int):
            if op in "/%" and b == 0:
                return None
            if op == "/":
                q = abs(a) // abs(b)
                return q if (a >= 0) == (b >= 0) else -q
            if op == "%":
                return int(math.fmod(a, b))
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if op == "/":
            return a / b
        if op == "%":
            return math.fmod(a, b)
    except (ZeroDivisionError, TypeError, OverflowError, ValueError):
        return None
    raise AssertionError(op)


def _bin(value: Any, size: Any) -> Any:
    if value is None or size is None:
        return None
    if isinstance(value, datetime):
        step = size // timedelta(microseconds=1)
        if step <= 0:
            return None
        us = (value - _EPOCH_0001) // timedelta(microseconds=1)
        return _EPOCH_0001 + timedelta(microseconds=us - us % step)
    if isinstance(value, timedelta):
        step = size // timedelta(microseconds=1)
        if step <= 0:
            return None
        us = value // timedelta(microseconds=1)
        return timedelta(microseconds=us - us % step)
    if size == 0:
        return None
    if isinstance(value, int) and isinstance(size, int):
        return (value // size) * size
    return math.floor(value / size) * size


def _expr_name(expr: Expr) -> str | None:
    """The column name Kusto infers for an unnamed expression (None -> ColumnN)."""
    if isinstance(expr, Col):
        return expr.name
    if isinstance(expr, Call) and expr.name in ("bin", "floor") and expr.args:
        return _expr_name(expr.args[0])
    return None


_SCALAR_ARITY: dict[str, tuple[int, int]] = {
    "ago": (1, 1),
    "now": (0, 0),
    "todatetime": (1, 1),
    "tostring": (1, 1),
    "toint": (1, 1),
    "tolong": (1, 1),
    "toreal": (1, 1),
    "todouble": (1, 1),
    "tobool": (1, 1),
    "toboolean": (1, 1),
    "parse_json": (1, 1),
    "todynamic": (1, 1),
    "isempty": (1, 1),
    "isnotempty": (1, 1),
    "isnull": (1, 1),
    "isnotnull": (1, 1),
    "not": (1, 1),
    "iff": (3, 3),
    "iif": (3, 3),
    "bin": (2, 2),
    "floor": (2, 2),
    "tolower": (1, 1),
    "toupper": (1, 1),
    "strlen": (1, 1),
    "strcat": (1, 64),
    "timespan": (1, 1),
    "time": (1, 1),
}

AGGREGATES = frozenset(
    {"count", "countif", "sum", "avg", "min", "max", "percentile", "percentiles", "dcount"}
)


def _compile(expr: Expr, ctx: _Ctx) -> tuple[str, Fn]:
    if isinstance(expr, Lit):
        return expr.type, _const(expr.value)

    if isinstance(expr, Col):
        if expr.name not in ctx.schema:
            raise _semantic(
                f"'{ctx.operator}' operator: Failed to resolve scalar expression named "
                f"'{expr.name}'",
                expr.pos,
                expr.name,
            )
        name = expr.name
        return ctx.schema[name], lambda r: r.get(name)

    if isinstance(expr, Neg):
        t, fn = _compile(expr.operand, ctx)
        if t not in NUMERIC and t not in (TIMESPAN, DYNAMIC):
            raise _semantic(f"Unary '-' cannot be applied to type {t}", expr.pos, "-")
        return t, lambda r: None if (v := fn(r)) is None else -v

    if isinstance(expr, BinOp):
        return _compile_binop(expr, ctx)

    if isinstance(expr, InList):
        lt, lfn = _compile(expr.left, ctx)
        items = [_compile(i, ctx) for i in expr.items]
        for (it, _), item in zip(items, expr.items, strict=True):
            if not _comparable(lt, it):
                raise _semantic(
                    f"Cannot compare values of types {lt} and {it}. Try adding explicit casts",
                    item.pos,
                )
        negate = expr.op.startswith("!")
        fold = expr.op.endswith("~")
        fns = [f for _, f in items]
        all_const = all(isinstance(i, Lit) for i in expr.items)
        if fold:
            const_set = {_tostring(f({})).lower() for f in fns} if all_const else None

            def in_fold(r: Row) -> bool | None:
                v = lfn(r)
                if v is None:
                    return None
                s = _tostring(v).lower()
                found = (
                    s in const_set
                    if const_set is not None
                    else any(s == _tostring(f(r)).lower() for f in fns)
                )
                return found != negate

            return BOOL, in_fold
        const_values = [f({}) for f in fns] if all_const else None

        def in_exact(r: Row) -> bool | None:
            v = lfn(r)
            if v is None:
                return None
            values = const_values if const_values is not None else [f(r) for f in fns]
            found = any(_cmp_values("==", v, x) for x in values)
            return found != negate

        return BOOL, in_exact

    if isinstance(expr, Between):
        lt, lfn = _compile(expr.left, ctx)
        lot, lofn = _compile(expr.low, ctx)
        hit, hifn = _compile(expr.high, ctx)
        high_is_span = lt == DATETIME and hit == TIMESPAN
        if not _comparable(lt, lot) or not (high_is_span or _comparable(lt, hit)):
            raise _semantic(
                f"'between' cannot be applied to types {lt}, {lot} and {hit}", expr.pos, "between"
            )
        negate = expr.negate

        def between(r: Row) -> bool | None:
            v, lo, hi = lfn(r), lofn(r), hifn(r)
            if v is None or lo is None or hi is None:
                return None
            if high_is_span:
                hi = lo + hi
            try:
                inside = lo <= v <= hi
            except TypeError:
                return None
            return inside != negate

        return BOOL, between

    if isinstance(expr, Member):
        tt, tfn = _compile(expr.target, ctx)
        if tt != DYNAMIC:
            raise _semantic(
                f"Member access or indexing requires a dynamic value, got {tt}", expr.pos
            )
        kt, kfn = _compile(expr.key, ctx)

        def member(r: Row) -> Any:
            obj, key = tfn(r), kfn(r)
            if isinstance(obj, dict) and isinstance(key, str):
                return obj.get(key)
            if (
                isinstance(obj, list)
                and isinstance(key, int)
                and not isinstance(key, bool)
                and -len(obj) <= key < len(obj)
            ):
                return obj[key]
            return None

        del kt
        return DYNAMIC, member

    if isinstance(expr, Call):
        return _compile_call(expr, ctx)

    raise _semantic("Unsupported expression", getattr(expr, "pos", None))


def _compile_binop(expr: BinOp, ctx: _Ctx) -> tuple[str, Fn]:
    op = expr.op
    lt, lfn = _compile(expr.left, ctx)
    rt, rfn = _compile(expr.right, ctx)

    if op in ("and", "or"):
        for t, sub in ((lt, expr.left), (rt, expr.right)):
            if t not in (BOOL, DYNAMIC):
                raise _semantic(f"'{op}' requires boolean operands, got {t}", sub.pos, op)
        if op == "and":

            def and_(r: Row) -> bool | None:
                a = lfn(r)
                if a is False:
                    return False
                b = rfn(r)
                if b is False:
                    return False
                if a is None or b is None:
                    return None
                return True

            return BOOL, and_

        def or_(r: Row) -> bool | None:
            a = lfn(r)
            if a is True:
                return True
            b = rfn(r)
            if b is True:
                return True
            if a is None or b is None:
                return None
            return False

        return BOOL, or_

    if op in ("==", "!=", "<", ">", "<=", ">="):
        if not _comparable(lt, rt):
            raise _semantic(
                f"Cannot compare values of types {lt} and {rt}. Try adding explicit casts",
                expr.pos,
                op,
            )
        if DYNAMIC in (lt, rt) and lt != rt:
            other = rt if lt == DYNAMIC else lt

            def dyn_cmp(r: Row) -> bool | None:
                a, b = lfn(r), rfn(r)
                dyn = a if lt == DYNAMIC else b
                if not _is_dynamic_scalar_compatible(dyn, other):
                    return None if dyn is None else (op == "!=")
                return _cmp_values(op, a, b)

            return BOOL, dyn_cmp
        return BOOL, lambda r: _cmp_values(op, lfn(r), rfn(r))

    if op in ("=~", "!~"):
        if lt not in (STRING, DYNAMIC) or rt not in (STRING, DYNAMIC):
            raise _semantic(f"'{op}' requires string operands, got {lt} and {rt}", expr.pos, op)
        negate = op == "!~"

        def eq_fold(r: Row) -> bool | None:
            a, b = lfn(r), rfn(r)
            if a is None or b is None:
                return None
            return (_tostring(a).lower() == _tostring(b).lower()) != negate

        return BOOL, eq_fold

    if op.lstrip("!").split("_")[0] in ("has", "contains", "startswith", "endswith"):
        negate = op.startswith("!")
        pred = _string_predicate(op.lstrip("!"))

        def strop(r: Row) -> bool | None:
            a, b = lfn(r), rfn(r)
            if b is None:
                return None
            return pred(_tostring(a), _tostring(b)) != negate

        return BOOL, strop

    if op in ("+", "-", "*", "/", "%"):
        result_type = _arith_type(op, lt, rt, expr.pos)
        if op == "+" and lt == TIMESPAN and rt == DATETIME:
            return result_type, lambda r: _arith("+", rfn(r), lfn(r), result_type)
        return result_type, lambda r: _arith(op, lfn(r), rfn(r), result_type)

    raise _semantic(f"Unsupported operator '{op}'", expr.pos, op)


def _compile_call(expr: Call, ctx: _Ctx) -> tuple[str, Fn]:
    name = expr.name
    if name in AGGREGATES:
        raise _semantic(
            f"Function '{name}' cannot be invoked in the current context. "
            "Aggregation functions are allowed only in summarize",
            expr.pos,
            name,
        )
    if name not in _SCALAR_ARITY:
        raise _semantic(f"Unknown function: '{name}'", expr.pos, name)
    lo, hi = _SCALAR_ARITY[name]
    if not lo <= len(expr.args) <= hi:
        raise _semantic(
            f"Function '{name}': expected {lo}..{hi} argument(s), got {len(expr.args)}",
            expr.pos,
            name,
        )
    compiled = [_compile(a, ctx) for a in expr.args]
    types = [t for t, _ in compiled]
    fns = [f for _, f in compiled]

    def need(i: int, *allowed: str) -> None:
        if types[i] not in allowed and types[i] != DYNAMIC:
            raise _semantic(
                f"Function '{name}': argument {i + 1} must be {' or '.join(allowed)}, "
                f"got {types[i]}",
                expr.args[i].pos,
                name,
            )

    if name == "now":
        now = ctx.now
        return DATETIME, _const(now)
    if name == "ago":
        need(0, TIMESPAN)
        now, f0 = ctx.now, fns[0]
        return DATETIME, lambda r: None if (v := f0(r)) is None else now - v
    if name in ("timespan", "time"):
        if not (isinstance(expr.args[0], Lit) and types[0] == TIMESPAN):
            raise _semantic(f"'{name}' expects a timespan literal", expr.pos, name)
        return TIMESPAN, fns[0]
    f0 = fns[0] if fns else _const(None)
    if name == "todatetime":
        return DATETIME, lambda r: _to_datetime(f0(r))
    if name == "tostring":
        return STRING, lambda r: _tostring(f0(r))
    if name == "toint":
        return INT, lambda r: _to_int(f0(r))
    if name == "tolong":
        return LONG, lambda r: _to_long(f0(r))
    if name in ("toreal", "todouble"):
        return REAL, lambda r: _to_real(f0(r))
    if name in ("tobool", "toboolean"):
        return BOOL, lambda r: _to_bool(f0(r))
    if name in ("parse_json", "todynamic"):
        return DYNAMIC, lambda r: _parse_json(f0(r))
    if name in ("isempty", "isnotempty"):
        want_empty = name == "isempty"
        return BOOL, lambda r: ((v := f0(r)) is None or v == "") == want_empty
    if name in ("isnull", "isnotnull"):
        want_null = name == "isnull"
        return BOOL, lambda r: (f0(r) is None) == want_null
    if name == "not":
        need(0, BOOL)
        return BOOL, lambda r: None if (v := f0(r)) is None else not v
    if name in ("iff", "iif"):
        need(0, BOOL)
        if not (_comparable(types[1], types[2])):
            raise _semantic(
                f"'{name}': branches have different types {types[1]} and {types[2]}",
                expr.pos,
                name,
            )
        result = types[1] if types[1] == types[2] else (REAL if REAL in types[1:] else types[1])
        f1, f2 = fns[1], fns[2]
        return result, lambda r: f1(r) if f0(r) is True else f2(r)
    if name in ("bin", "floor"):
        vt, st = types
        ok = (vt in NUMERIC and st in NUMERIC) or (vt in (DATETIME, TIMESPAN) and st == TIMESPAN)
        if not ok:
            raise _semantic(f"'{name}' cannot be applied to types {vt} and {st}", expr.pos, name)
        f1 = fns[1]
        result = vt if vt not in NUMERIC else (REAL if REAL in (vt, st) else vt)
        return result, lambda r: _bin(f0(r), f1(r))
    if name in ("tolower", "toupper"):
        upper = name == "toupper"
        return STRING, lambda r: _tostring(f0(r)).upper() if upper else _tostring(f0(r)).lower()
    if name == "strlen":
        return LONG, lambda r: len(_tostring(f0(r)))
    if name == "strcat":
        return STRING, lambda r: "".join(_tostring(f(r)) for f in fns)
    raise _semantic(f"Unknown function: '{name}'", expr.pos, name)


# --------------------------------------------------------------------------------------------
# Aggregates
# --------------------------------------------------------------------------------------------


def _nearest_rank(values: list[Any], p: float) -> Any:
    if not values:
        return None
    values = sorted(values)
    rank = max(1, math.ceil(p / 100.0 * len(values)))
    return values[min(rank, len(values)) - 1]


class _Acc:
    """One aggregate's running state for one group."""

    __slots__ = ("count", "distinct", "max", "min", "total", "values")

    def __init__(self) -> None:
        self.count = 0
        self.total: Any = None
        self.min: Any = None
        self.max: Any = None
        self.values: list[Any] = []
        self.distinct: set[Any] = set()


@dataclass
class _Agg:
    names: list[str]
    types: list[str]
    update: Callable[[_Acc, Row], None]
    finish: Callable[[_Acc], list[Any]]


def _hashable(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return _dynamic_to_text(value)
    return value


def _compile_agg(item: Named, ctx: _Ctx) -> _Agg:
    expr = item.expr
    if not isinstance(expr, Call) or expr.name not in AGGREGATES:
        raise _semantic(
            "'summarize' operator: expected an aggregation function such as count(), "
            "sum(), avg(), percentile()",
            expr.pos,
        )
    name, args = expr.name, expr.args
    arity = {
        "count": (0, 0),
        "countif": (1, 1),
        "sum": (1, 1),
        "avg": (1, 1),
        "min": (1, 1),
        "max": (1, 1),
        "percentile": (2, 2),
        "percentiles": (2, 32),
        "dcount": (1, 2),
    }[name]
    if not arity[0] <= len(args) <= arity[1]:
        raise _semantic(
            f"Function '{name}': expected {arity[0]}..{arity[1]} argument(s), got {len(args)}",
            expr.pos,
            name,
        )
    arg_name = _expr_name(args[0]) if args else None
    default = f"{name}_" + (arg_name or "")
    if name == "count":
        default = "count_"
    elif name == "countif":
        default = "countif_"

    if name == "count":

        def upd_count(acc: _Acc, r: Row) -> None:
            acc.count += 1

        return _Agg([item.name or default], [LONG], upd_count, lambda acc: [acc.count])

    t, fn = _compile(args[0], ctx)

    if name == "countif":
        if t not in (BOOL, DYNAMIC):
            raise _semantic("countif() requires a boolean predicate", args[0].pos, name)

        def upd_countif(acc: _Acc, r: Row) -> None:
            if fn(r) is True:
                acc.count += 1

        return _Agg([item.name or default], [LONG], upd_countif, lambda acc: [acc.count])

    if name == "dcount":

        def upd_dcount(acc: _Acc, r: Row) -> None:
            v = fn(r)
            if v is not None:
                acc.distinct.add(_hashable(v))

        return _Agg([item.name or default], [LONG], upd_dcount, lambda acc: [len(acc.distinct)])

    if name in ("sum", "avg"):
        if t not in NUMERIC and t not in (TIMESPAN, DYNAMIC):
            raise _semantic(f"{name}(): argument must be numeric, got {t}", args[0].pos, name)
        if name == "sum":
            out_t = REAL if t in (REAL, DYNAMIC) else (TIMESPAN if t == TIMESPAN else LONG)
        else:
            out_t = TIMESPAN if t == TIMESPAN else REAL

        def upd_sum(acc: _Acc, r: Row) -> None:
            v = fn(r)
            if v is None or isinstance(v, (str, bool, dict, list)):
                return
            acc.total = v if acc.total is None else acc.total + v
            acc.count += 1

        if name == "sum":
            zero: Any = timedelta(0) if out_t == TIMESPAN else 0

            def fin_sum(acc: _Acc) -> list[Any]:
                total = zero if acc.total is None else acc.total
                return [float(total) if out_t == REAL else total]

            return _Agg([item.name or default], [out_t], upd_sum, fin_sum)

        def fin_avg(acc: _Acc) -> list[Any]:
            if not acc.count:
                return [None]
            return [acc.total / acc.count]

        return _Agg([item.name or default], [out_t], upd_sum, fin_avg)

    if name in ("min", "max"):
        is_min = name == "min"

        def upd_minmax(acc: _Acc, r: Row) -> None:
            v = fn(r)
            if v is None or isinstance(v, (dict, list)):
                return
            try:
                if is_min:
                    if acc.min is None or v < acc.min:
                        acc.min = v
                elif acc.max is None or v > acc.max:
                    acc.max = v
            except TypeError:
                return

        return _Agg(
            [item.name or default],
            [t],
            upd_minmax,
            lambda acc: [acc.min if is_min else acc.max],
        )

    # percentile / percentiles
    percents: list[float] = []
    for p_expr in args[1:]:
        if not (isinstance(p_expr, Lit) and p_expr.type in NUMERIC):
            raise _semantic(f"{name}(): percentage must be a numeric literal", p_expr.pos, name)
        p = float(p_expr.value)
        if not 0 <= p <= 100:
            raise _semantic(f"{name}(): percentage must be in [0, 100]", p_expr.pos, name)
        percents.append(p)
    if t not in NUMERIC and t not in (DATETIME, TIMESPAN, DYNAMIC):
        raise _semantic(f"{name}(): argument must be numeric, got {t}", args[0].pos, name)

    def pct_label(p: float) -> str:
        text = f"{p:g}" if not float(p).is_integer() else str(int(p))
        return text.replace(".", "_")

    base = arg_name or ""
    if name == "percentile":
        names = [item.name or f"percentile_{base}_{pct_label(percents[0])}"]
    else:
        if item.name:
            raise _semantic(
                "percentiles(): name the results with (a, b) = percentiles(...) "
                "(not supported here)",
                expr.pos,
                name,
            )
        names = [f"percentile_{base}_{pct_label(p)}" for p in percents]

    def upd_pct(acc: _Acc, r: Row) -> None:
        v = fn(r)
        if v is not None and not isinstance(v, (dict, list, str)):
            acc.values.append(v)

    def fin_pct(acc: _Acc) -> list[Any]:
        return [_nearest_rank(acc.values, p) for p in percents]

    out_t = LONG if t == DYNAMIC else t
    return _Agg(names, [out_t] * len(names), upd_pct, fin_pct)


# --------------------------------------------------------------------------------------------
# Execution
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    name: str
    type: str


@dataclass
class Table:
    """A named input table: its columns (with types) and its rows (dicts keyed by column)."""

    columns: Sequence[Column]
    rows: Iterable[Row] | Callable[[], Iterable[Row]]


@dataclass
class Result:
    """Query output: typed columns and a row iterator (lists of Python values, column order)."""

    columns: list[Column]
    rows: Iterator[list[Any]]


def _unique(name: str, taken: Mapping[str, Any]) -> str:
    if name not in taken:
        return name
    for i in itertools.count(1):
        candidate = f"{name}{i}"
        if candidate not in taken:
            return candidate
    raise AssertionError


def _run_op(
    op: Op, schema: dict[str, str], rows: Iterator[Row], now: datetime
) -> tuple[dict[str, str], Iterator[Row]]:
    ctx = _Ctx(schema, now, op.kind)

    if op.kind == "where":
        assert op.predicate is not None
        t, pred = _compile(op.predicate, ctx)
        if t not in (BOOL, DYNAMIC):
            raise _semantic(
                f"'where' operator: the predicate must be boolean, got {t}", op.predicate.pos
            )
        return schema, (r for r in rows if pred(r) is True)

    if op.kind == "extend":
        new_schema = dict(schema)
        steps: list[tuple[str, Fn]] = []
        auto = itertools.count(1)
        for named in op.items:
            ctx_step = _Ctx(new_schema, now, "extend")
            t, fn = _compile(named.expr, ctx_step)
            name = (
                named.name or _expr_name(named.expr) or _unique(f"Column{next(auto)}", new_schema)
            )
            new_schema[name] = t
            steps.append((name, fn))

        def extend(src: Iterator[Row]) -> Iterator[Row]:
            for r in src:
                out = dict(r)
                for name, fn in steps:
                    out[name] = fn(out)
                yield out

        return new_schema, extend(rows)

    if op.kind == "project":
        new_schema: dict[str, str] = {}
        cols: list[tuple[str, Fn]] = []
        auto = itertools.count(1)
        for named in op.items:
            t, fn = _compile(named.expr, ctx)
            name = named.name or _expr_name(named.expr)
            if name is None:
                name = _unique(f"Column{next(auto)}", new_schema)
            if name in new_schema:
                raise _semantic(
                    f"'project' operator: column '{name}' is specified more than once",
                    named.expr.pos,
                    name,
                )
            new_schema[name] = t
            cols.append((name, fn))

        def project(src: Iterator[Row]) -> Iterator[Row]:
            for r in src:
                yield {name: fn(r) for name, fn in cols}

        return new_schema, project(rows)

    if op.kind == "project-away":
        drop: set[str] = set()
        for tok in op.items:
            name = str(tok)
            if name not in schema:
                raise _semantic(
                    f"'project-away' operator: Failed to resolve column named '{name}'",
                    _pos_of(tok),
                    name,
                )
            drop.add(name)
        new_schema = {k: v for k, v in schema.items() if k not in drop}
        keep = list(new_schema)
        return new_schema, ({k: r.get(k) for k in keep} for r in rows)

    if op.kind == "take":
        return schema, itertools.islice(rows, op.count)

    if op.kind == "count":
        return {"Count": LONG}, iter([{"Count": sum(1 for _ in rows)}])

    if op.kind == "order":
        keys = [(_compile(k.expr, ctx)[1], k) for k in op.items]

        def ordered(src: Iterator[Row]) -> Iterator[Row]:
            data = list(src)
            for fn, key in reversed(keys):
                data.sort(key=lambda r, fn=fn: _sort_key(fn(r)), reverse=key.descending)
                # nulls: sorted() above puts None first ascending / last descending;
                # move them when the requested placement differs.
                nulls = [r for r in data if fn(r) is None]
                if nulls and (key.nulls_first == key.descending):
                    rest = [r for r in data if fn(r) is not None]
                    data = nulls + rest if key.nulls_first else rest + nulls
            yield from data

        return schema, ordered(rows)

    if op.kind == "summarize":
        return _summarize(op, ctx, rows)

    raise _semantic(f"Unsupported operator '{op.kind}'", op.pos, op.kind)


def _sort_key(value: Any) -> tuple[int, Any]:
    if value is None:
        return (0, 0)
    if isinstance(value, (dict, list)):
        return (1, _dynamic_to_text(value))
    if isinstance(value, bool):
        return (1, int(value))
    return (1, value)


def _summarize(op: Op, ctx: _Ctx, rows: Iterator[Row]) -> tuple[dict[str, str], Iterator[Row]]:
    key_cols: list[tuple[str, str, Fn]] = []
    out_schema: dict[str, str] = {}
    auto = itertools.count(1)
    for named in op.by:
        t, fn = _compile(named.expr, ctx)
        if isinstance(named.expr, Call) and named.expr.name in AGGREGATES:
            raise _semantic(
                "'summarize' operator: aggregation functions are not allowed after 'by'",
                named.expr.pos,
            )
        name = named.name or _expr_name(named.expr) or f"Column{next(auto)}"
        name = _unique(name, out_schema)
        out_schema[name] = t
        key_cols.append((name, t, fn))
    aggs = [_compile_agg(item, ctx) for item in op.items]
    agg_names: list[list[str]] = []
    for agg in aggs:
        names = []
        for n, t in zip(agg.names, agg.types, strict=True):
            n = _unique(n, out_schema)
            out_schema[n] = t
            names.append(n)
        agg_names.append(names)
    if not aggs and not key_cols:
        raise _semantic("'summarize' operator: nothing to summarize", op.pos)

    def run(src: Iterator[Row]) -> Iterator[Row]:
        groups: dict[tuple[Any, ...], tuple[list[Any], list[_Acc]]] = {}
        key_fns = [fn for _, _, fn in key_cols]
        for r in src:
            raw = [fn(r) for fn in key_fns]
            hkey = tuple(_hashable(v) for v in raw)
            entry = groups.get(hkey)
            if entry is None:
                entry = (raw, [_Acc() for _ in aggs])
                groups[hkey] = entry
            for agg, acc in zip(aggs, entry[1], strict=True):
                agg.update(acc, r)
        if not groups and not key_cols:
            groups[()] = ([], [_Acc() for _ in aggs])
        for raw, accs in groups.values():
            out: dict[str, Any] = {name: v for (name, _, _), v in zip(key_cols, raw, strict=True)}
            for agg, acc, names in zip(aggs, accs, agg_names, strict=True):
                for n, v in zip(names, agg.finish(acc), strict=True):
                    out[n] = v
            yield out

    return out_schema, run(rows)


def execute(
    query: str | Query,
    tables: Mapping[str, Table],
    *,
    now: datetime | None = None,
) -> Result:
    """Run ``query`` over ``tables``.

    Compilation (and so every semantic error) happens before any row is read; rows stream
    through ``where``/``extend``/``project``/``take`` and are materialised only by
    ``summarize``, ``order by`` and ``count``. ``now`` fixes ``now()``/``ago()`` for the query
    (Kusto evaluates ``now()`` once per query).
    """
    q = parse(query) if isinstance(query, str) else query
    now = now or datetime.now(UTC)
    table = tables.get(q.table)
    if table is None:
        raise _semantic(
            f"Failed to resolve table or column expression named '{q.table}'",
            q.table_pos,
            q.table,
        )
    schema = {c.name: c.type for c in table.columns}
    source = table.rows() if callable(table.rows) else table.rows
    rows: Iterator[Row] = iter(source)
    for op in q.ops:
        schema, rows = _run_op(op, schema, rows, now)
    names = list(schema)
    return Result(
        columns=[Column(n, schema[n]) for n in names],
        rows=([r.get(n) for n in names] for r in rows),
    )
