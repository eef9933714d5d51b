"""Code extraction from model output: pick the right block, drop what is not the solution.

Follows EvalPlus's sanitizer (evalplus/sanitize.py, v0.3.1) in spirit, on Python's `ast` instead
of tree-sitter: the kept program is the imports plus the definitions (functions, classes,
assignments) that the entry point reaches; test code, prints and `__main__` blocks go.
Differences, on purpose: a later definition of a name replaces an earlier one (as Python would
run it), and functions are kept even without a `return`.
"""

from __future__ import annotations

import ast
import codeop
import re
import warnings
from collections.abc import Iterable

_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+-]*)[^\n]*$", re.MULTILINE)
_MAX_SPAN_LINES = 400  # the longest-parsable-span search is quadratic; cap its input
# A span may start at any non-indented line, as in EvalPlus's code_extract: constants before the first
# def (`MOD = 7`) belong to the program too.
_START = re.compile(r"^\S")


def sanitize(
    text: str, entry_point: str | None = None, *, trim: bool = True, keep: Iterable[str] = ()
) -> tuple[str, bool]:
    """The cleaned program and whether cleaning changed it (ignoring surrounding whitespace).

    `keep`: more names whose definitions must survive (helpers the tests call, like HumanEval/50's
    `encode_shift`).
    """
    code = _pick_block(_candidates(text), entry_point)
    if trim:
        code = _trim(code, entry_point, set(keep))
    return code, _changed(text, code)


def _changed(before: str, after: str) -> bool:
    """Did cleaning change what the code means? Layout and comments do not count."""
    try:
        return ast.dump(_parse(before)) != ast.dump(_parse(after))
    except (SyntaxError, ValueError):
        return before.strip() != after.strip()


def _candidates(text: str) -> list[str]:
    """Fenced blocks (an unterminated last one runs to the end); else the whole text."""
    fences = list(_FENCE.finditer(text))
    if not fences:
        return [text]
    blocks = []
    # Text before the first fence is code when the prompt ended inside an opened block.
    head = text[: fences[0].start()]
    i = 0
    if head.strip() and _parses(head) and _defines_something(head):
        blocks.append(head)
        i = 1  # the first fence closed that block
    while i < len(fences):
        start = fences[i].end() + 1
        end = fences[i + 1].start() if i + 1 < len(fences) else len(text)
        if fences[i].group(1).lower() not in ("", "python", "py", "python3"):
            i += 2
            continue
        blocks.append(text[start:end])
        i += 2
    return blocks or [text]


def _parse(code: str) -> ast.Module:
    """ast.parse without the warnings (invalid escapes ...) that model and benchmark code is full of."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ast.parse(code)


def _parses(code: str) -> bool:
    try:
        _parse(code)
    except (SyntaxError, ValueError):
        return False
    return True


def _defines_something(code: str) -> bool:
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) for n in _parse(code).body)


def _defines(code: str, name: str) -> bool:
    return any(
        isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.name == name
        for n in _parse(code).body
    )


def _pick_block(blocks: list[str], entry_point: str | None) -> str:
    """The longest block that defines the entry point, else the longest block that parses."""
    parsable = [b if _parses(b) else _longest_parsable(b) for b in blocks]
    parsable = [b for b in parsable if b.strip()]
    if not parsable:
        return blocks[0] if blocks else ""
    if entry_point:
        defining = [b for b in parsable if _defines(b, entry_point)]
        if defining:
            return max(defining, key=len)
    return max(parsable, key=len)


def _longest_parsable(code: str) -> str:
    """The longest run of lines that parses and starts like a program (prose mixed with code)."""
    lines = code.splitlines()[:_MAX_SPAN_LINES]
    best, best_len = "", 0
    for i, first in enumerate(lines):
        if not _START.match(first) or not _may_open(first):
            continue
        for j in range(len(lines), i, -1):
            size = sum(1 for line in lines[i:j] if line.strip())
            if size <= best_len:
                break
            chunk = "\n".join(lines[i:j])
            if _parses(chunk):
                best, best_len = chunk, size
                break
    return best


def _may_open(line: str) -> bool:
    """Can a program start with this line (complete, or an unfinished statement)? Prose cannot; skipping
    it keeps the quadratic span search cheap on long explanations."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            codeop.compile_command(line, "<span>", "exec")
        except (SyntaxError, ValueError, OverflowError):
            return False
    return True


def referenced_names(code: str) -> set[str]:
    """Every identifier a piece of code mentions (empty if it does not parse)."""
    try:
        return _names(_parse(code))
    except (SyntaxError, ValueError):
        return set()


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)
    }


def _defined_names(node: ast.stmt) -> list[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, ast.Assign):
        targets = [e for t in node.targets for e in (t.elts if isinstance(t, ast.Tuple) else [t])]
    elif isinstance(node, ast.AnnAssign):
        targets = [node.target]
    else:
        return []
    return [t.id for t in targets if isinstance(t, ast.Name)]


def _is_import(node: ast.stmt) -> bool:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return True
    return isinstance(node, ast.Try) and all(
        isinstance(n, (ast.Import, ast.ImportFrom, ast.Pass))
        for n in node.body + [s for h in node.handlers for s in h.body]
    )


def _definitions(tree: ast.Module) -> dict[str, ast.stmt]:
    """Each top-level name and the statement that defines it; the last definition wins, as when the code runs."""
    return {name: node for node in tree.body for name in _defined_names(node)}


def _reachable(defs: dict[str, ast.stmt], roots: Iterable[str], skip: Iterable[str] = ()) -> set[str]:
    """The names among `defs` that `roots` reach through the names their definitions mention (`skip` never)."""
    keep: set[str] = set()
    skip = set(skip)
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in keep or name not in defs or name in skip:
            continue
        keep.add(name)
        todo.extend(_names(defs[name]))
    return keep


def _trim(code: str, entry_point: str | None, keep_names: set[str]) -> str:
    """Imports, then the definitions reachable from the entry point (all of them if there is none)."""
    try:
        tree = _parse(code)
    except (SyntaxError, ValueError):
        return code
    defs = _definitions(tree)
    keep = set(defs)
    if entry_point and entry_point in defs:
        keep = _reachable(defs, [entry_point, *keep_names])
    lines = code.splitlines()
    kept = [
        n for n in tree.body if _is_import(n) or any(name in keep and defs[name] is n for name in _defined_names(n))
    ]
    return "\n".join(_source(n, lines) for n in kept)


def definitions_of(code: str, names: Iterable[str], *, exclude: Iterable[str] = ()) -> str:
    """`code`'s top-level definitions of `names`, those they reach and the imports those use, in `code`'s
    order ("" if there are none or `code` does not parse). Why: HumanEval's tests call helpers that only
    the prompt defines (HumanEval/38's `encode_cyclic`); a chat answer need not restate them."""
    try:
        tree = _parse(code)
    except (SyntaxError, ValueError):
        return ""
    defs = _definitions(tree)
    keep = _reachable(defs, names, skip=exclude)
    if not keep:
        return ""
    used = set().union(*(_names(defs[name]) for name in keep))
    lines = code.splitlines()
    kept = [
        n
        for n in tree.body
        if any(name in keep and defs[name] is n for name in _defined_names(n))
        or (_is_import(n) and used & _imported_names(n))
    ]
    return "\n".join(_source(n, lines) for n in kept)


def import_bindings(code: str) -> list[tuple[str, str]]:
    """(name, a one-name import statement binding it) for every name `code`'s top-level imports bind, in
    order; [] if `code` does not parse. Star and `__future__` imports are left out: they bind no name one
    can check. Why one statement per name: the caller imports only what is not bound yet."""
    try:
        tree = _parse(code)
    except (SyntaxError, ValueError):
        return []
    out = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            out += [((a.asname or a.name).split(".")[0], f"import {_alias(a)}") for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            module = "." * node.level + (node.module or "")
            out += [(a.asname or a.name, f"from {module} import {_alias(a)}") for a in node.names if a.name != "*"]
    return out


def _alias(a: ast.alias) -> str:
    return f"{a.name} as {a.asname}" if a.asname else a.name


def _imported_names(node: ast.stmt) -> set[str]:
    """The names an import statement (or a try/except import block) binds."""
    return {
        (alias.asname or alias.name).split(".")[0]
        for n in ast.walk(node)
        if isinstance(n, (ast.Import, ast.ImportFrom))
        for alias in n.names
    }


def _source(node: ast.stmt, lines: list[str]) -> str:
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return "\n".join(lines[first - 1 : node.end_lineno])
