"""Expand ``SELECT *``, ``t.*`` and ``RETURNING *`` into explicit column lists, keeping every other byte.

An old application binary built with ``SELECT *`` breaks as soon as a migration adds a column to the
table it reads (ory/hydra#1664, #3192). The cure is to name the columns the old code expects. This
module does it with the Postgres grammar (pglast): each statement is parsed, the FROM clause of every
query level is resolved the way Postgres' parse analysis does (tables and views from a catalog, CTEs
from their own output columns, subqueries, ``VALUES``, set-returning functions with column lists,
joins with ``USING`` / ``NATURAL`` column merging, aliases with column renames), and each ``*`` is
replaced, at the location the parse tree gives, by the columns it stands for. Nothing else in the text
changes: comments, spacing and casing stay as written.

Left untouched, and reported with the reason: ``count(*)``, the select list of ``EXISTS (...)``, a
whole-row ``t.*`` inside an expression (``row_to_json(t.*)``: expanding it would change its value),
and every ``*`` that cannot be resolved (a relation missing from the catalog, a function whose result
columns are unknown, a name two FROM items share...).

Safety belt: every rewritten statement is parsed again and compared with the original parse tree in
which each replaced ``*`` is swapped for the new column references; any difference drops the rewrite
of that statement and reports it.
"""

from __future__ import annotations

import contextlib
import difflib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pglast import ast, parse_sql, parser
from pglast.enums import (
    A_Expr_Kind,
    JoinType,
    JsonExprOp,
    JsonTableColumnType,
    MinMaxOp,
    ReturningOptionKind,
    SetOperation,
    SQLValueFunctionOp,
    SubLinkType,
    XmlExprOp,
)
from pglast.keywords import UNRESERVED_KEYWORDS

from .parse import SqlSyntaxError, position, split_statements
from .queryparams import Converted, convert

__all__ = [
    "Catalog",
    "FileRewrite",
    "Relation",
    "StarChange",
    "StarKept",
    "quote_ident",
    "rewrite_sql",
    "statement_columns",
]


# --------------------------------------------------------------------------------------------------
# Catalog interface and results


@dataclass(frozen=True, slots=True)
class Relation:
    """A table, view, materialized view or foreign table: its schema, name and columns in order."""

    schema: str
    name: str
    columns: tuple[str, ...]
    kind: str = "table"
    types: tuple[str, ...] = ()


class Catalog(Protocol):
    """Where relations are looked up (``querycatalog.QueryCatalog`` is the implementation)."""

    def lookup(self, schema: str | None, name: str) -> Relation | None:
        """The relation ``schema.name``, or the first ``name`` on the search path; None if absent."""
        ...


@dataclass(frozen=True, slots=True)
class StarChange:
    """One ``*`` replaced: where (1-based, in the original file), what it was and what it became."""

    line: int
    column: int
    before: str
    after: str
    columns: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StarKept:
    """One star left as written. ``kind`` is ``kept`` (on purpose) or ``unresolved`` (could not expand)."""

    line: int
    column: int
    text: str
    reason: str
    kind: str = "unresolved"


@dataclass
class FileRewrite:
    """The outcome for one SQL text: the new text, the replacements made and the stars left."""

    source: str
    original: str
    text: str
    changes: list[StarChange] = field(default_factory=list)
    kept: list[StarKept] = field(default_factory=list)
    statements: int = 0

    @property
    def changed(self) -> bool:
        return self.text != self.original

    @property
    def unresolved(self) -> list[StarKept]:
        return [k for k in self.kept if k.kind == "unresolved"]

    def diff(self) -> str:
        """A unified diff from the original text to the rewritten one ('' when nothing changed)."""
        return "".join(difflib.unified_diff(self.original.splitlines(keepends=True),
                                            self.text.splitlines(keepends=True),
                                            fromfile=f"a/{self.source.lstrip('/')}",
                                            tofile=f"b/{self.source.lstrip('/')}"))


# --------------------------------------------------------------------------------------------------
# Identifiers


def quote_ident(name: str) -> str:
    """Quote an identifier only where Postgres needs it (the rule of its own ``quote_ident``)."""
    safe = bool(name) and (("a" <= name[0] <= "z") or name[0] == "_") \
        and all(("a" <= c <= "z") or ("0" <= c <= "9") or c == "_" for c in name)
    if safe and name in _KEYWORDS and name not in UNRESERVED_KEYWORDS:
        safe = False
    return name if safe else '"' + name.replace('"', '""') + '"'


def _all_keywords() -> frozenset[str]:
    from pglast import keywords

    return frozenset(keywords.RESERVED_KEYWORDS | keywords.TYPE_FUNC_NAME_KEYWORDS
                     | keywords.COL_NAME_KEYWORDS | keywords.UNRESERVED_KEYWORDS)


_KEYWORDS = _all_keywords()


# --------------------------------------------------------------------------------------------------
# Name resolution model (a small copy of Postgres' parse namespace)


class _Unresolved(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(eq=False)
class _Join:
    jointype: JoinType
    left: _Item
    right: _Item
    cols: list[tuple[str, int | None, int | None]]  # (source: left|right|merged, left index, right index)
    using_alias: _Item | None = None


@dataclass(eq=False)
class _Item:
    """A FROM item as Postgres' namespace sees it."""

    refname: str | None
    columns: list[str] | None
    unknown: str = ""
    kind: str = "relation"
    rel_visible: bool = True
    cols_visible: bool = True
    schema: str | None = None  # an unaliased relation: its schema (to tell apart s1.t and s2.t)
    qualifier: str = ""
    join: _Join | None = None

    def known(self) -> list[str]:
        if self.columns is None:
            raise _Unresolved(self.unknown or f"the columns of {self.refname or 'a FROM item'} are unknown")
        return self.columns


@dataclass(eq=False)
class _Scope:
    parent: _Scope | None
    ctes: dict[str, list[str] | str] = field(default_factory=dict)  # name -> columns, or why unknown
    items: list[_Item] = field(default_factory=list)

    def cte(self, name: str) -> tuple[bool, list[str] | str]:
        scope: _Scope | None = self
        while scope is not None:
            if name in scope.ctes:
                return True, scope.ctes[name]
            scope = scope.parent
        return False, ""

    def outer(self) -> _Scope:
        """The scope a non-LATERAL subquery of this level sees: this level's CTEs, no FROM items."""
        return _Scope(self.parent, self.ctes)

    def finish(self) -> None:
        """Set how each item's columns are qualified (schema-qualify unaliased same-named relations)."""
        names = Counter(it.refname for it in self.items if it.rel_visible and it.refname is not None)
        for it in self.items:
            if it.refname is None:
                continue
            if names[it.refname] > 1 and it.schema is not None:
                it.qualifier = f"{quote_ident(it.schema)}.{quote_ident(it.refname)}"
            else:
                it.qualifier = quote_ident(it.refname)


def _strings(nodes: Sequence[Any] | None) -> list[str]:
    return [str(n.sval) for n in nodes or () if isinstance(n, ast.String)]


def _rename(columns: list[str] | None, alias: Any, what: str) -> list[str] | None:
    if columns is None or alias is None or not alias.colnames:
        return columns
    new = _strings(alias.colnames)
    if len(new) > len(columns):
        raise _Unresolved(f"{what} has {len(columns)} columns but its alias names {len(new)}")
    return new + columns[len(new):]


def _qualified(item: _Item, k: int) -> str:
    """A reference to column ``k`` of ``item`` that no other column of the scope can capture."""
    columns = item.known()
    name = columns[k]
    if item.rel_visible and item.refname is not None:
        if columns.count(name) > 1:
            raise _Unresolved(f'{item.refname} has two columns named "{name}": a reference would be ambiguous')
        return f"{item.qualifier}.{quote_ident(name)}"
    if item.join is not None:
        source, left, right = item.join.cols[k]
        if source == "left" and left is not None:
            return _qualified(item.join.left, left)
        if source == "right" and right is not None:
            return _qualified(item.join.right, right)
        if item.join.using_alias is not None:
            return _qualified(item.join.using_alias, item.join.using_alias.known().index(name))
        if item.join.jointype in (JoinType.JOIN_INNER, JoinType.JOIN_LEFT) and left is not None:
            return _qualified(item.join.left, left)
        if item.join.jointype == JoinType.JOIN_RIGHT and right is not None:
            return _qualified(item.join.right, right)
        raise _Unresolved(f'the merged column "{name}" of a FULL JOIN has the same name as another column'
                          " of the query; give the join's USING an alias (USING (...) AS j)")
    raise _Unresolved(f"a {item.kind} without an alias has the same column names as another FROM item;"
                      " give it an alias")


def _expand_all(scope: _Scope) -> tuple[list[str], list[str]]:
    """Column names and references of an unqualified ``*`` in ``scope``."""
    visible = [it for it in scope.items if it.cols_visible]
    if not visible:
        raise _Unresolved("SELECT * without a FROM clause has no columns")
    counts = Counter(name for it in visible for name in it.known())
    single = len(visible) == 1 and visible[0].join is None
    names: list[str] = []
    refs: list[str] = []
    for it in visible:
        for k, name in enumerate(it.known()):
            if single:
                if counts[name] > 1:
                    raise _Unresolved(f'two columns are named "{name}": a reference would be ambiguous')
                refs.append(quote_ident(name))
            elif it.join is not None and it.join.cols[k][0] == "merged" and counts[name] == 1:
                refs.append(quote_ident(name))  # a USING / NATURAL column: unqualified, like Postgres names it
            elif it.join is None and it.refname is None:  # a subquery without an alias: no name to qualify
                if counts[name] > 1:
                    raise _Unresolved(f'the column "{name}" of a {it.kind} without an alias is also a column of'
                                      " another FROM item; give it an alias")
                refs.append(quote_ident(name))
            else:
                refs.append(_qualified(it, k))
            names.append(name)
    return names, refs


def _find_item(scope: _Scope, names: list[str]) -> _Item:
    current: _Scope | None = scope
    wanted = ".".join(names)
    while current is not None:
        matches = []
        for it in current.items:
            if not it.rel_visible or it.refname is None:
                continue
            unqualified = len(names) == 1 and it.refname == names[0]
            if unqualified or (len(names) >= 2 and it.schema == names[-2] and it.refname == names[-1]):
                matches.append(it)
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise _Unresolved(f"table reference {wanted} is ambiguous")
        current = current.parent
    raise _Unresolved(f"no FROM item is named {wanted}")


# --------------------------------------------------------------------------------------------------
# Column names Postgres gives to expressions (FigureColname)

_SVF_NAMES: dict[Any, str] = {
    SQLValueFunctionOp.SVFOP_CURRENT_DATE: "current_date",
    SQLValueFunctionOp.SVFOP_CURRENT_TIME: "current_time",
    SQLValueFunctionOp.SVFOP_CURRENT_TIME_N: "current_time",
    SQLValueFunctionOp.SVFOP_CURRENT_TIMESTAMP: "current_timestamp",
    SQLValueFunctionOp.SVFOP_CURRENT_TIMESTAMP_N: "current_timestamp",
    SQLValueFunctionOp.SVFOP_LOCALTIME: "localtime",
    SQLValueFunctionOp.SVFOP_LOCALTIME_N: "localtime",
    SQLValueFunctionOp.SVFOP_LOCALTIMESTAMP: "localtimestamp",
    SQLValueFunctionOp.SVFOP_LOCALTIMESTAMP_N: "localtimestamp",
    SQLValueFunctionOp.SVFOP_CURRENT_ROLE: "current_role",
    SQLValueFunctionOp.SVFOP_CURRENT_USER: "current_user",
    SQLValueFunctionOp.SVFOP_USER: "user",
    SQLValueFunctionOp.SVFOP_SESSION_USER: "session_user",
    SQLValueFunctionOp.SVFOP_CURRENT_CATALOG: "current_catalog",
    SQLValueFunctionOp.SVFOP_CURRENT_SCHEMA: "current_schema",
}
_XML_NAMES: dict[Any, str] = {
    XmlExprOp.IS_XMLCONCAT: "xmlconcat", XmlExprOp.IS_XMLELEMENT: "xmlelement",
    XmlExprOp.IS_XMLFOREST: "xmlforest", XmlExprOp.IS_XMLPARSE: "xmlparse", XmlExprOp.IS_XMLPI: "xmlpi",
    XmlExprOp.IS_XMLROOT: "xmlroot", XmlExprOp.IS_XMLSERIALIZE: "xmlserialize",
}
_JSON_FUNC_NAMES: dict[Any, str] = {JsonExprOp.JSON_EXISTS_OP: "json_exists", JsonExprOp.JSON_QUERY_OP: "json_query",
                    JsonExprOp.JSON_VALUE_OP: "json_value"}
_FIXED_NAMES: dict[type[ast.Node], str] = {
    ast.CoalesceExpr: "coalesce", ast.GroupingFunc: "grouping", ast.A_ArrayExpr: "array", ast.RowExpr: "row",
    ast.XmlSerialize: "xmlserialize", ast.MergeSupportFunc: "merge_action",
    ast.JsonObjectConstructor: "json_object", ast.JsonArrayConstructor: "json_array",
    ast.JsonArrayQueryConstructor: "json_array", ast.JsonObjectAgg: "json_objectagg",
    ast.JsonArrayAgg: "json_arrayagg", ast.JsonParseExpr: "json", ast.JsonScalarExpr: "json_scalar",
    ast.JsonSerializeExpr: "json_serialize",
}


def _figure(node: Any, sublink_names: Callable[[Any], list[str] | None]) -> tuple[str, int]:
    """Postgres' FigureColnameInternal: ``(name, strength)``; strength 0 means ``?column?``."""
    if isinstance(node, ast.ColumnRef):
        names = _strings(node.fields)
        return (names[-1], 2) if names else ("?column?", 0)
    if isinstance(node, ast.A_Indirection):
        names = _strings(node.indirection)
        return (names[-1], 2) if names else _figure(node.arg, sublink_names)
    if isinstance(node, ast.FuncCall):
        return _strings(node.funcname)[-1], 2
    if isinstance(node, ast.A_Expr) and node.kind == A_Expr_Kind.AEXPR_NULLIF:
        return "nullif", 2
    if isinstance(node, ast.TypeCast):
        name, strength = _figure(node.arg, sublink_names)
        if strength <= 1 and node.typeName is not None:
            return _strings(node.typeName.names)[-1], 1
        return name, strength
    if isinstance(node, ast.CollateClause):
        return _figure(node.arg, sublink_names)
    if isinstance(node, ast.SubLink):
        if node.subLinkType == SubLinkType.EXISTS_SUBLINK:
            return "exists", 2
        if node.subLinkType == SubLinkType.ARRAY_SUBLINK:
            return "array", 2
        if node.subLinkType == SubLinkType.EXPR_SUBLINK:
            first = sublink_names(node.subselect)
            if first:
                return first[0], 2
        return "?column?", 0
    if isinstance(node, ast.CaseExpr):
        name, strength = _figure(node.defresult, sublink_names) if node.defresult is not None else ("", 0)
        if strength <= 1:
            return "case", 1
        return name, strength
    if isinstance(node, ast.MinMaxExpr):
        return ("greatest" if node.op == MinMaxOp.IS_GREATEST else "least"), 2
    if isinstance(node, ast.SQLValueFunction):
        return _SVF_NAMES.get(getattr(node, "op", None), "?column?"), 2
    if isinstance(node, ast.XmlExpr):
        xml = _XML_NAMES.get(getattr(node, "op", None))
        return (xml, 2) if xml else ("?column?", 0)
    if isinstance(node, ast.JsonFuncExpr):
        func = _JSON_FUNC_NAMES.get(getattr(node, "op", None))
        return (func, 2) if func else ("?column?", 0)
    for cls, fixed in _FIXED_NAMES.items():
        if isinstance(node, cls):
            return fixed, 2
    return "?column?", 0


# Set-returning functions whose result columns are known without the catalog.
_SCALAR_SRFS = frozenset({
    "generate_series", "generate_subscripts", "regexp_split_to_table", "regexp_matches", "string_to_table",
    "json_array_elements", "jsonb_array_elements", "json_array_elements_text", "jsonb_array_elements_text",
    "json_object_keys", "jsonb_object_keys", "jsonb_path_query", "pg_ls_dir",
})
_RECORD_SRFS = {
    "json_each": ["key", "value"], "jsonb_each": ["key", "value"], "json_each_text": ["key", "value"],
    "jsonb_each_text": ["key", "value"],
}


# --------------------------------------------------------------------------------------------------
# The analyzer: one per statement


@dataclass(frozen=True, slots=True)
class _Splice:
    start: int  # in the (converted) statement text
    end: int
    text: str
    key: int | None  # the replaced star's location in the parse tree (None: TABLE t)
    refs: tuple[str, ...]
    columns: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Note:
    offset: int
    text: str
    reason: str
    kind: str


def _walk_nodes(node: Any) -> Iterator[ast.Node]:
    if isinstance(node, tuple | list):
        for child in node:
            yield from _walk_nodes(child)
    elif isinstance(node, ast.Node):
        yield node
        for attr in node:
            yield from _walk_nodes(getattr(node, attr))


def _is_star(node: Any) -> bool:
    fields: Any = getattr(node, "fields", None) if isinstance(node, ast.ColumnRef) else None
    return bool(fields) and isinstance(fields[-1], ast.A_Star)


class _Analyzer:
    """Resolve every query level of one statement; collect splices (if ``text``) and notes."""

    def __init__(self, catalog: Catalog, text: str | None = None) -> None:
        self.catalog = catalog
        self.text = text
        self.splices: list[_Splice] = []
        self.notes: list[_Note] = []
        self._outputs: dict[int, list[str] | None] = {}
        self._tokens: list[Any] | None = None

    # -- recording -------------------------------------------------------------------------------

    def _note(self, offset: int | None, text: str, reason: str, kind: str = "unresolved") -> None:
        if self.text is not None:
            self.notes.append(_Note(offset if offset is not None and offset >= 0 else 0, text, reason, kind))

    def tokens(self) -> list[Any]:
        if self._tokens is None:
            self._tokens = list(parser.scan(self.text or ""))
        return self._tokens

    def _star_text(self, ref: Any) -> str:
        names = _strings(ref.fields)
        return ".".join(quote_ident(n) for n in names) + ".*" if names else "*"

    def _star_span(self, ref: Any) -> tuple[int, int, str]:
        """``(start, end, qualifier as written)`` of a star in the statement text."""
        assert self.text is not None
        loc = ref.location
        if loc is None or loc < 0:
            raise _Unresolved("the parser gave no position for this *")
        if len(ref.fields) == 1:
            if self.text[loc:loc + 1] != "*":
                raise _Unresolved("the * is not where the parser says it is")
            return loc, loc + 1, ""
        tokens = self.tokens()
        index = next((i for i, t in enumerate(tokens) if t.start == loc), None)
        if index is None:
            raise _Unresolved("the parser's position of this t.* matches no token")
        parts: list[str] = []
        for tok in tokens[index:]:
            tok_text = self.text[tok.start:tok.end + 1]
            if tok.name in ("SQL_COMMENT", "C_COMMENT"):
                raise _Unresolved("a comment inside t.* would be lost")
            if tok_text == "*":
                qualifier = ".".join(parts)
                return loc, tok.end + 1, qualifier
            if tok_text != ".":
                parts.append(tok_text)
        raise _Unresolved("the end of t.* was not found")

    def _splice(self, ref: Any, names: list[str], refs: list[str]) -> None:
        if self.text is None:
            return
        start, end, _ = self._star_span(ref)
        self._add_splice(start, end, ", ".join(refs), ref.location, refs, names)

    def _add_splice(self, start: int, end: int, body: str, key: int | None, refs: list[str],
                    names: list[str]) -> None:
        assert self.text is not None
        before = self.text[start - 1] if start > 0 else " "
        after = self.text[end] if end < len(self.text) else " "
        if not before.isspace() and before not in "(,":
            body = " " + body
        if not after.isspace() and after not in "),;":
            body = body + " "
        self.splices.append(_Splice(start, end, body, key, tuple(refs), tuple(names)))

    # -- statements ------------------------------------------------------------------------------

    def statement(self, node: Any, parent: _Scope | None = None) -> list[str] | None:
        """Analyze any statement; return its output columns (None: none or unknown)."""
        if isinstance(node, ast.SelectStmt):
            return self.select(node, parent)
        if isinstance(node, ast.InsertStmt | ast.UpdateStmt | ast.DeleteStmt | ast.MergeStmt):
            return self._dml(node, parent)
        self._walk(node, parent or _Scope(None))
        return None

    def select(self, stmt: Any, parent: _Scope | None, *, exists: bool = False,
               on_left: Callable[[list[str] | None], None] | None = None) -> list[str] | None:
        scope = _Scope(parent)
        if stmt.withClause is not None:
            self._with(stmt.withClause, scope)
        if stmt.op != SetOperation.SETOP_NONE:
            left = self.select(stmt.larg, scope, exists=exists)
            if on_left is not None:
                on_left(left)
            self.select(stmt.rarg, scope, exists=exists)
            for part in (stmt.sortClause, stmt.limitOffset, stmt.limitCount, stmt.lockingClause):
                self._walk(part, scope)
            self._outputs[id(stmt)] = left
            return left
        if stmt.valuesLists:
            self._walk(stmt.valuesLists, scope)
            width = len(stmt.valuesLists[0]) if stmt.valuesLists else 0
            names: list[str] | None = [f"column{i + 1}" for i in range(width)]
            self._outputs[id(stmt)] = names
            return names
        for item in stmt.fromClause or ():
            scope.items.extend(self._from_item(item, scope))
        scope.finish()
        names = self._targets(stmt.targetList or (), scope, exists=exists, table_stmt=stmt)
        for part in (stmt.whereClause, stmt.groupClause, stmt.havingClause, stmt.windowClause,
                     stmt.sortClause, stmt.limitOffset, stmt.limitCount, stmt.distinctClause,
                     stmt.lockingClause):
            self._walk(part, scope)
        self._outputs[id(stmt)] = names
        return names

    def _targets(self, targets: Sequence[Any], scope: _Scope, *, exists: bool = False,
                 table_stmt: Any = None) -> list[str] | None:
        names: list[str] | None = []
        for target in targets:
            val = target.val
            if _is_star(val):
                star_names = self._star(val, scope, exists=exists, table_stmt=table_stmt)
                if star_names is None or names is None:
                    names = None
                else:
                    names.extend(star_names)
                continue
            self._walk(val, scope)
            if names is not None:
                names.append(target.name or _figure(val, self._sublink_names)[0])
        return names

    def _star(self, ref: Any, scope: _Scope, *, exists: bool,
              table_stmt: Any) -> list[str] | None:
        star_text = self._star_text(ref)
        if exists:
            self._note(ref.location, star_text, "the select list of EXISTS (...) is never read", "kept")
            return None
        try:
            if len(ref.fields) == 1:
                names, refs = _expand_all(scope)
            else:
                names, refs = self._expand_qualified(ref, scope)
            if self.text is not None:
                if not refs:  # SELECT s.* FROM (SELECT FROM t) s: nothing to write in its place
                    raise _Unresolved("it stands for no column at all: there is no column list to write")
                if ref.location is None and table_stmt is not None:
                    self._splice_table(table_stmt, names, refs)
                else:
                    self._splice(ref, names, refs)
        except _Unresolved as exc:
            self._note(ref.location, star_text if ref.location is not None else "TABLE", exc.reason)
            return None
        return names

    def _expand_qualified(self, ref: Any, scope: _Scope) -> tuple[list[str], list[str]]:
        names = _strings(ref.fields)
        item = _find_item(scope, names)
        columns = item.known()
        qualifier = self._star_span(ref)[2] if self.text is not None else ".".join(names)
        counts = Counter(columns)
        refs = []
        for name in columns:
            if counts[name] > 1:
                raise _Unresolved(f'{".".join(names)} has two columns named "{name}": a reference would be'
                                  " ambiguous")
            refs.append(f"{qualifier}.{quote_ident(name)}")
        return list(columns), refs

    def _splice_table(self, stmt: Any, names: list[str], refs: list[str]) -> None:
        """``TABLE t`` is ``SELECT * FROM t``: replace the keyword TABLE by ``SELECT cols FROM``."""
        assert self.text is not None
        rel = (stmt.fromClause or (None,))[0]
        loc = getattr(rel, "location", None)
        if loc is None:
            raise _Unresolved("the parser gave no position for TABLE")
        table_tok = None
        for tok in self.tokens():
            if tok.start >= loc:
                break
            if tok.name == "TABLE":
                table_tok = tok
        if table_tok is None:
            raise _Unresolved("the TABLE keyword was not found")
        self._add_splice(table_tok.start, table_tok.end + 1, f"SELECT {', '.join(refs)} FROM", None, refs, names)

    def _sublink_names(self, subselect: Any) -> list[str] | None:
        return self._outputs.get(id(subselect))

    def _with(self, clause: Any, scope: _Scope) -> None:
        for cte in clause.ctes or ():
            name = cte.ctename
            query = cte.ctequery

            def register(columns: list[str] | None, cte: Any = cte, name: str = name) -> None:
                try:
                    renamed = _rename(columns, ast.Alias(aliasname=name, colnames=cte.aliascolnames)
                                      if cte.aliascolnames else None, f"WITH query {name}")
                except _Unresolved as exc:
                    scope.ctes[name] = exc.reason
                    return
                if renamed is None:
                    scope.ctes[name] = f"the columns of WITH query {name} are unknown"
                    return
                renamed = list(renamed)
                if cte.search_clause is not None:
                    renamed.append(cte.search_clause.search_seq_column)
                if cte.cycle_clause is not None:
                    renamed += [cte.cycle_clause.cycle_mark_column, cte.cycle_clause.cycle_path_column]
                scope.ctes[name] = renamed

            if clause.recursive and isinstance(query, ast.SelectStmt) and query.op != SetOperation.SETOP_NONE:
                scope.ctes[name] = f"WITH RECURSIVE {name} is read before its columns are known"
                self.select(query, scope, on_left=register)
            else:
                register(self.statement(query, scope))

    def _dml(self, stmt: Any, parent: _Scope | None) -> list[str] | None:
        scope = _Scope(parent)
        if stmt.withClause is not None:
            self._with(stmt.withClause, scope)
        target = self._relation(stmt.relation, scope)
        items = [target]
        if isinstance(stmt, ast.InsertStmt):
            if stmt.selectStmt is not None:
                self.statement(stmt.selectStmt, scope)
            if stmt.onConflictClause is not None:
                excluded = _Item("excluded", list(target.columns) if target.columns is not None else None,
                                 target.unknown, cols_visible=False)
                self._walk(stmt.onConflictClause, _Scope(scope.parent, scope.ctes, [target, excluded]))
        else:
            extra = stmt.fromClause if isinstance(stmt, ast.UpdateStmt) else \
                stmt.usingClause if isinstance(stmt, ast.DeleteStmt) else [stmt.sourceRelation]
            inner = _Scope(scope.parent, scope.ctes, [target])
            for item in extra or ():
                inner.items.extend(self._from_item(item, inner))
            inner.finish()
            items = inner.items
            for part in ("targetList", "whereClause", "joinCondition", "mergeWhenClauses"):
                if hasattr(stmt, part):
                    self._walk(getattr(stmt, part), inner)
        return self._returning(stmt.returningClause, items, scope, target)

    def _returning(self, clause: Any, items: list[_Item], scope: _Scope,
                   target: _Item) -> list[str] | None:
        if clause is None:
            return None
        aliases = {ReturningOptionKind.RETURNING_OPTION_OLD: "old", ReturningOptionKind.RETURNING_OPTION_NEW: "new"}
        for option in clause.options or ():
            aliases[option.option] = option.value
        pseudo = [_Item(alias, target.columns, target.unknown, kind="relation", cols_visible=False)
                  for alias in aliases.values()]
        rscope = _Scope(scope.parent, scope.ctes, [*items, *pseudo])
        rscope.finish()
        return self._targets(clause.exprs or (), rscope)

    # -- FROM items ------------------------------------------------------------------------------

    def _relation(self, rv: Any, scope: _Scope) -> _Item:
        alias = rv.alias
        refname = alias.aliasname if alias is not None else rv.relname
        shown = f"{rv.schemaname}.{rv.relname}" if rv.schemaname else rv.relname
        columns: list[str] | None = None
        unknown = ""
        schema: str | None = None
        kind = "relation"
        is_cte, cte = (False, "") if rv.schemaname else scope.cte(rv.relname)
        if is_cte:
            kind = "WITH query"
            if isinstance(cte, str):
                unknown = cte
            else:
                columns = list(cte)
        else:
            relation = self.catalog.lookup(rv.schemaname, rv.relname)
            if relation is None:
                unknown = f"relation {shown} is not in the catalog"
            else:
                columns = list(relation.columns)
                schema = relation.schema
                kind = relation.kind
        try:
            columns = _rename(columns, alias, shown)
        except _Unresolved as exc:
            columns, unknown = None, exc.reason
        return _Item(refname, columns, unknown, kind=kind, schema=schema if alias is None else None)

    def _from_item(self, node: Any, scope: _Scope) -> list[_Item]:
        if isinstance(node, ast.RangeVar):
            return [self._relation(node, scope)]
        if isinstance(node, ast.RangeSubselect):
            inner = scope if node.lateral else scope.outer()
            columns = self.statement(node.subquery, inner)
            unknown = "" if columns is not None else "the columns of a subquery in FROM are unknown"
            try:
                columns = _rename(columns, node.alias, "a subquery")
            except _Unresolved as exc:
                columns, unknown = None, exc.reason
            refname = node.alias.aliasname if node.alias is not None else None
            return [_Item(refname, columns, unknown, kind="subquery", rel_visible=refname is not None)]
        if isinstance(node, ast.RangeFunction):
            return [self._function(node, scope)]
        if isinstance(node, ast.JoinExpr):
            return self._join(node, scope)
        if isinstance(node, ast.RangeTableSample):
            self._walk((node.args, node.repeatable), scope)
            return self._from_item(node.relation, scope)
        if isinstance(node, ast.RangeTableFunc):
            self._walk((node.docexpr, node.rowexpr), scope)
            columns = [c.colname for c in node.columns or ()]
            with contextlib.suppress(_Unresolved):
                columns = _rename(columns, node.alias, "XMLTABLE") or columns
            refname = node.alias.aliasname if node.alias is not None else "xmltable"
            return [_Item(refname, columns, kind="XMLTABLE")]
        if isinstance(node, ast.JsonTable):
            self._walk(node.context_item, scope)
            flat: list[str] = []

            def collect(cols: Sequence[Any]) -> None:
                for col in cols or ():
                    if col.coltype == JsonTableColumnType.JTC_NESTED:
                        collect(col.columns)
                    else:
                        flat.append(col.name)

            collect(node.columns or ())
            refname = node.alias.aliasname if node.alias is not None else "json_table"
            return [_Item(refname, _rename(flat, node.alias, "JSON_TABLE"), kind="JSON_TABLE")]
        return [_Item(None, None, f"an unsupported FROM item ({type(node).__name__})", kind="FROM item",
                      rel_visible=False)]

    def _function(self, node: Any, scope: _Scope) -> _Item:
        alias = node.alias
        refname = alias.aliasname if alias is not None else None
        columns: list[str] | None = []
        unknown = ""
        for func, coldefs in node.functions or ():
            self._walk(func, scope)  # functions in FROM see the items before them (implicitly LATERAL)
            fname = _strings(getattr(func, "funcname", ()))[-1:] or ["?"]
            name = fname[0]
            if refname is None:
                refname = name
            defs = coldefs or (node.coldeflist if not node.is_rowsfrom else None)
            if defs:
                cols = [d.colname for d in defs]
            elif name in _RECORD_SRFS:
                cols = list(_RECORD_SRFS[name])
            elif name in _SCALAR_SRFS or (name == "unnest" and len(getattr(func, "args", ()) or ()) == 1):
                if node.is_rowsfrom or len(node.functions) > 1:
                    cols = [name]
                else:
                    cols = [alias.aliasname if alias is not None else name]
            else:
                columns = None
                unknown = (f"the result columns of function {name}() are not in the catalog;"
                           f" give them in the query (AS {refname}(col type, ...))")
                break
            assert columns is not None
            columns.extend(cols)
        if columns is not None and node.ordinality:
            columns.append("ordinality")
        try:
            columns = _rename(columns, alias, f"function {refname}")
        except _Unresolved as exc:
            columns, unknown = None, exc.reason
        return _Item(refname, columns, unknown, kind="function")

    def _join(self, node: Any, scope: _Scope) -> list[_Item]:
        left_items = self._from_item(node.larg, scope)
        # the right side may refer to the left side (LATERAL)
        lateral = _Scope(scope.parent, scope.ctes, [*scope.items, *left_items])
        right_items = self._from_item(node.rarg, lateral)
        left, right = left_items[0], right_items[0]
        children = [*left_items, *right_items]
        quals_scope = _Scope(scope.parent, scope.ctes, [*scope.items, *children])
        quals_scope.finish()
        self._walk(node.quals, quals_scope)

        columns: list[str] | None = None
        unknown = ""
        cols: list[tuple[str, int | None, int | None]] = []
        using_alias: _Item | None = None
        try:
            lcols, rcols = left.known(), right.known()
            using = [c for c in lcols if c in rcols] if node.isNatural else _strings(node.usingClause)
            merged: list[tuple[str, int, int]] = []
            for name in using:
                if lcols.count(name) != 1 or rcols.count(name) != 1:
                    raise _Unresolved(f'the join column "{name}" is not exactly once on each side')
                merged.append((name, lcols.index(name), rcols.index(name)))
            names = [m[0] for m in merged]
            cols = [("merged", li, ri) for _, li, ri in merged]
            for i, name in enumerate(lcols):
                if name not in names:
                    cols.append(("left", i, None))
            for i, name in enumerate(rcols):
                if name not in names:
                    cols.append(("right", None, i))
            columns = [lcols[li] if li is not None and src != "right" else rcols[ri]  # type: ignore[index]
                       for src, li, ri in cols]
            if node.join_using_alias is not None:
                using_alias = _Item(node.join_using_alias.aliasname, names, kind="join", cols_visible=False)
        except _Unresolved as exc:
            columns, unknown = None, exc.reason
        if node.alias is not None:
            try:
                columns = _rename(columns, node.alias, "a join")
            except _Unresolved as exc:
                columns, unknown = None, exc.reason
            return [_Item(node.alias.aliasname, columns, unknown, kind="join")]
        join = _Join(node.jointype, left, right, cols, using_alias) if columns is not None else None
        item = _Item(None, columns, unknown, kind="join", rel_visible=False, join=join)
        for child in children:
            child.cols_visible = False
        extra = [using_alias] if using_alias is not None else []
        return [item, *children, *extra]

    # -- expressions -----------------------------------------------------------------------------

    def _walk(self, node: Any, scope: _Scope | None) -> None:
        scope = scope or _Scope(None)
        if node is None:
            return
        if isinstance(node, tuple | list):
            for child in node:
                self._walk(child, scope)
            return
        if not isinstance(node, ast.Node):
            return
        if isinstance(node, ast.SubLink):
            self._walk(node.testexpr, scope)
            self.select(node.subselect, scope, exists=node.subLinkType == SubLinkType.EXISTS_SUBLINK) \
                if isinstance(node.subselect, ast.SelectStmt) else self.statement(node.subselect, scope)
            return
        if isinstance(node, ast.SelectStmt | ast.InsertStmt | ast.UpdateStmt | ast.DeleteStmt | ast.MergeStmt):
            self.statement(node, scope)
            return
        if _is_star(node):
            assert isinstance(node, ast.ColumnRef)
            self._note(node.location, self._star_text(node),
                       "a whole-row value inside an expression: expanding it would change the result", "kept")
            return
        if isinstance(node, ast.FuncCall) and node.agg_star:
            name = ".".join(_strings(node.funcname))
            self._note(node.location, f"{name}(*)", f"{name}(*) counts rows: it is not a column list", "kept")
        for attr in node:
            self._walk(getattr(node, attr), scope)


# --------------------------------------------------------------------------------------------------
# Public API


def statement_columns(node: Any, catalog: Catalog) -> list[str] | None:
    """The output column names of a parsed query (a view's definition, say), or None if unknown."""
    return _Analyzer(catalog).statement(node)


def _safety_belt(original: str, rewritten: str, splices: list[_Splice]) -> str | None:
    """Parse both texts; None if the rewrite only swapped each star for its columns, else why not."""
    try:
        before = parse_sql(original)
        after = parse_sql(rewritten)
    except parser.ParseError as exc:
        return f"the rewritten statement does not parse: {exc}"
    replacement: dict[int | None, tuple[Any, ...]] = {}
    for splice in splices:
        select: Any = parse_sql("SELECT " + ", ".join(splice.refs))[0].stmt
        targets = select.targetList
        replacement[splice.key] = tuple(targets)
    for node in _walk_nodes(before):
        holder = node if isinstance(node, ast.SelectStmt | ast.ReturningClause) else None
        if holder is None:
            continue
        attr = "targetList" if isinstance(holder, ast.SelectStmt) else "exprs"
        targets = getattr(holder, attr)
        if not targets:
            continue
        new: list[Any] = []
        swapped = False
        for target in targets:
            val: Any = getattr(target, "val", None)
            if _is_star(val) and val.location in replacement:
                new.extend(replacement[val.location])
                swapped = True
            else:
                new.append(target)
        if swapped:
            setattr(holder, attr, tuple(new))
    if before != after:
        return "the rewritten statement does not parse to the original with the columns in place of the *"
    return None


_TOO_DEEP = ("nested too deeply to analyse (an expression of more than a few hundred levels): left as written;"
             " any star in it is not expanded")


def rewrite_sql(text: str, catalog: Catalog, source: str = "<sql>", placeholders: str = "auto") -> FileRewrite:
    """Expand the stars of every statement in ``text`` against ``catalog``.

    :param placeholders: how the text marks parameters (see :func:`queryparams.convert`).
    :raises SqlSyntaxError: a statement the Postgres grammar rejects (position in ``text``).
    """
    converted = convert(text, placeholders)
    try:
        statements = split_statements(converted.text, source)
    except SqlSyntaxError as exc:
        raise _remap(exc, converted, source) from None
    result = FileRewrite(source, text, text, statements=len(statements))
    splices: list[tuple[int, int, str, _Splice]] = []  # original start, end, replacement
    for stmt in statements:
        try:
            notes, own = _statement_stars(stmt.text, catalog)
        except parser.ParseError as exc:  # split accepted it: should not happen
            line, column = position(text, converted.to_original(stmt.offset))
            raise SqlSyntaxError(source, line, column, str(exc)) from None
        except RecursionError:  # the grammar took it, but its tree is deeper than Python can walk
            notes, own = [_Note(0, "statement", _TOO_DEEP, "unresolved")], []
        for s in own:
            start = converted.to_original(stmt.offset + s.start)
            end = converted.to_original(stmt.offset + s.end)
            splices.append((start, end, s.text, s))
        for note in notes:
            line, column = position(text, converted.to_original(stmt.offset + note.offset))
            result.kept.append(StarKept(line, column, note.text, note.reason, note.kind))
    splices.sort(key=lambda s: s[0])
    result.text = _apply(text, [(a, b, t) for a, b, t, _ in splices])
    for start, end, _, s in splices:
        line, column = position(text, start)
        result.changes.append(StarChange(line, column, text[start:end], ", ".join(s.refs), s.columns))
    result.kept.sort(key=lambda k: (k.line, k.column))
    return result


def _statement_stars(text: str, catalog: Catalog) -> tuple[list[_Note], list[_Splice]]:
    """The notes and the star replacements of one statement (none if the safety belt refuses them).

    :raises parser.ParseError: the statement does not parse.
    :raises RecursionError: its tree is too deep to walk.
    """
    analyzer = _Analyzer(catalog, text)
    for raw in parse_sql(text):
        analyzer.statement(raw.stmt)
    own = sorted(analyzer.splices, key=lambda s: s.start)
    if own:
        problem = _safety_belt(text, _apply(text, [(s.start, s.end, s.text) for s in own]), own)
        if problem is not None:
            for s in own:
                analyzer.notes.append(_Note(s.start, text[s.start:s.end], f"not rewritten: {problem}", "unresolved"))
            own = []
    return analyzer.notes, own


def _apply(text: str, splices: list[tuple[int, int, str]]) -> str:
    out: list[str] = []
    pos = 0
    for start, end, body in sorted(splices):
        out.append(text[pos:start])
        out.append(body)
        pos = end
    out.append(text[pos:])
    return "".join(out)


def _remap(exc: SqlSyntaxError, converted: Converted, source: str) -> SqlSyntaxError:
    """Move a syntax error's position from the converted text back to the original."""
    lines = converted.text.split("\n")
    offset = sum(len(line) + 1 for line in lines[:exc.line - 1]) + exc.column - 1
    line, column = position(converted.original, converted.to_original(offset))
    return SqlSyntaxError(source, line, column, exc.message)
