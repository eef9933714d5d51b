"""Comparisons that untrusted return values cannot fake, and EvalPlus's output-matching rules.

An object whose class overrides `__eq__` to return True would pass `assert f(x) == y` and
EvalPlus's `out == exp`. We call a value *forged* when it, or anything inside its plain
containers, is an instance of a class that the program made (module `__main__`) or whose methods
were compiled from dynamic source (exec, lambdas: a "<...>" file name), and that defines a
dunder that can fake a comparison, truth test or arithmetic (`_DANGEROUS`). Test asserts are
rewritten so that the values they compare pass `checked` (not the arguments handed to the
function under test), and differential tests refuse forged outputs. Plain data, numpy values, and program
classes without such dunders compare as usual.
"""

from __future__ import annotations

import ast
import math
import types
from typing import Any

_PLAIN = frozenset({type(None), bool, int, float, complex, str, bytes})
_CONTAINERS = (list, tuple, set, frozenset, dict)
_MAX_WALK = 1_000_000  # elements inspected per value; deeper forgeries are out of scope
# Dunders through which a value can fake a comparison, a truth test, arithmetic or a type check.
# Why a list of the dangerous ones rather than of the harmless: exercises legitimately define
# classes with __iter__, __getitem__ or __call__, and those cannot make `out == exp` lie.
_ARITH = (
    "add",
    "sub",
    "mul",
    "matmul",
    "truediv",
    "floordiv",
    "mod",
    "divmod",
    "pow",
    "lshift",
    "rshift",
    "and",
    "xor",
    "or",
)
_DANGEROUS = frozenset(
    {
        "__eq__",
        "__ne__",
        "__lt__",
        "__le__",
        "__gt__",
        "__ge__",
        "__bool__",
        "__len__",
        "__hash__",
        "__contains__",
        "__neg__",
        "__pos__",
        "__abs__",
        "__invert__",
        "__round__",
        "__trunc__",
        "__floor__",
        "__ceil__",
        "__int__",
        "__float__",
        "__complex__",
        "__index__",
        "__getattr__",
        "__getattribute__",
        "__instancecheck__",
        "__subclasscheck__",
        "__class__",
    }
    | {f"__{p}{op}__" for op in _ARITH for p in ("", "r", "i")}
)
_forged_types: dict[type, bool] = {}


def _dynamic(attr: Any) -> bool:
    """True if `attr` is a function compiled from non-file source (the program, exec, a lambda)."""
    target = getattr(attr, "__func__", None) or getattr(attr, "fget", None) or attr
    code = getattr(target, "__code__", None)
    return isinstance(code, types.CodeType) and code.co_filename.startswith("<")


def _type_is_forged(tp: type) -> bool:
    """A class made by the program (or by dynamic code) that overrides a behaviour-changing dunder."""
    cached = _forged_types.get(tp)
    if cached is None:
        cached = False
        for klass in tp.__mro__:
            if klass.__module__ == "builtins":
                continue
            made_here = klass.__module__ == "__main__"
            for name, attr in vars(klass).items():
                if name in _DANGEROUS and (made_here and callable(attr) or _dynamic(attr)):
                    cached = True
        _forged_types[tp] = cached
    return cached


def is_forged(value: Any) -> bool:
    """True if `value`, or anything inside its plain containers, is a program-made comparable."""
    stack, seen = [value], 0
    while stack and seen < _MAX_WALK:
        v = stack.pop()
        seen += 1
        tp = type(v)
        if tp in _PLAIN:
            continue
        if _type_is_forged(tp):
            return True
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, _CONTAINERS):
            stack.extend(v)
    return False


def checked(value: Any) -> Any:
    """`value` itself, or an AssertionError if it is forged (wrapped around test expressions)."""
    if is_forged(value):
        tp = type(value)
        raise AssertionError(f"forged value: {tp.__qualname__} overrides comparison or arithmetic")
    return value


GUARD_NAMES = {"__scoder_checked__": checked}


class _AssertRewriter(ast.NodeTransformer):
    """Inside each `assert`, pass every name, call, attribute and subscript through `checked`.

    Why every operand, not just `==`: `abs(f(x) - y) < tol` and `assert f(x)` can be faked too.
    """

    def visit_Assert(self, node: ast.Assert) -> ast.Assert:
        node.test = _Wrap().visit(node.test)
        return node


class _Wrap(ast.NodeTransformer):
    def _wrap(self, node: ast.expr) -> ast.AST:
        self.generic_visit(node)
        if not isinstance(getattr(node, "ctx", ast.Load()), ast.Load):
            return node
        call = ast.Call(func=ast.Name(id="__scoder_checked__", ctx=ast.Load()), args=[node], keywords=[])
        return ast.copy_location(call, node)

    visit_Name = visit_Attribute = visit_Subscript = _wrap

    def visit_Call(self, node: ast.Call) -> ast.AST:
        """Check what a call returns. Arguments are checked only for builtins that transform a
        result (`abs(f(x) - y)`, `sorted(f(x))`); a user function's arguments are the test's own
        inputs, which may legitimately be objects with custom dunders."""
        if _transparent(node.func):
            self.generic_visit(node)
        call = ast.Call(func=ast.Name(id="__scoder_checked__", ctx=ast.Load()), args=[node], keywords=[])
        return ast.copy_location(call, node)

    def visit_Lambda(self, node: ast.Lambda) -> ast.AST:
        return node  # a lambda body runs later, outside the assert


_TRANSPARENT = frozenset(
    {
        "abs",
        "all",
        "any",
        "bool",
        "float",
        "frozenset",
        "int",
        "len",
        "list",
        "max",
        "min",
        "repr",
        "round",
        "set",
        "sorted",
        "str",
        "sum",
        "tuple",
        "type",
        "isinstance",
        "dict",
        "complex",
        "divmod",
        "pow",
        "reversed",
        "enumerate",
        "zip",
    }
)


def _transparent(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id in _TRANSPARENT
    return isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in ("math", "cmath")


def guard_asserts(source: str, filename: str) -> types.CodeType:
    """Compile test code with every assert's operands checked against forged values."""
    tree = _AssertRewriter().visit(ast.parse(source, filename))
    # dont_inherit: test code must not get this module's `from __future__ import annotations`.
    return compile(ast.fix_missing_locations(tree), filename, "exec", dont_inherit=True)


# ----------------------------------------------------------------------------- EvalPlus rules
# Special oracles of EvalPlus (evalplus/eval/_special_oracle.py, v0.3.1), reimplemented.
MBPP_OUTPUT_NOT_NONE = frozenset({"check_str", "text_match_three", "text_starta_endb"})
MBPP_OUTPUT_SET_EQ = frozenset(
    {
        "similar_elements",
        "find_char_long",
        "common_in_nested_lists",
        "extract_singly",
        "larg_nnum",
        "intersection_array",
        "find_dissimilar",
        "Diff",
    }
)


def _surface_area(base_edge: float, height: float) -> int:  # Mbpp/581: height is perpendicular
    slant = math.sqrt((base_edge / 2) ** 2 + height**2)
    return round(base_edge**2 + 4 * (base_edge * slant) / 2)


def _digit_distance(a: int, b: int) -> int:  # Mbpp/558: pad the shorter number with zeros
    sa, sb = str(a), str(b)
    width = max(len(sa), len(sb))
    return sum(abs(int(x) - int(y)) for x, y in zip(sa.zfill(width), sb.zfill(width)))


def _poly(xs: list, x: float) -> float:  # HumanEval/32 checks |poly(xs, root)| <= atol
    return sum(c * math.pow(x, i) for i, c in enumerate(xs))


def is_floats(x: Any) -> bool:
    """EvalPlus's test for float outputs: a float, or a non-empty list/tuple of floats, or a float array."""
    if isinstance(x, float):
        return True
    if isinstance(x, (list, tuple)) and x:
        return all(isinstance(i, float) for i in x)
    dtype = getattr(x, "dtype", None)
    return dtype is not None and str(dtype) in ("float64", "float32")


def _special(dataset: str, entry: str, inp: list, out: Any, exp: Any, exact: Any, atol: float) -> Any:
    """EvalPlus's per-task oracles; returns the (possibly widened) exact-match verdict."""
    if dataset == "mbpp":
        if entry == "are_equivalent":  # Mbpp/164: any answer is accepted upstream
            return True
        if entry == "sum_div":  # Mbpp/295
            return exact or out == 0
        if entry == "surface_Area":
            return exact or abs(out - _surface_area(*inp)) <= atol
        if entry == "digit_distance_nums":
            return exact or out == _digit_distance(*inp)
        if entry in MBPP_OUTPUT_SET_EQ:
            return set(out) == set(exp)
        if entry in MBPP_OUTPUT_NOT_NONE:
            return out == exp if isinstance(out, bool) else exp == (out is not None)
    return exact


def evalplus_match(dataset: str, entry: str, inp: list, out: Any, exp: Any, atol: float) -> tuple[bool, float]:
    """EvalPlus's verdict for one input, and the atol to carry to the next input.

    Why return atol: upstream overwrites its `atol` variable the first time it meets a float
    output, and later inputs of the same run inherit 1e-6; we keep that quirk for equal verdicts.
    """
    if is_forged(out):
        return False, atol
    if dataset == "humaneval" and entry == "find_zero":
        return abs(_poly(*inp, out)) <= atol, atol
    exact = _special(dataset, entry, inp, out, exp, out == exp, atol)
    if atol == 0 and is_floats(exp):
        atol = 1e-6
    if not exact and atol != 0:
        if type(out) is not type(exp):
            return False, atol
        if isinstance(exp, (list, tuple)) and len(out) != len(exp):
            return False, atol
        import numpy as np  # noqa: PLC0415 - most programs never reach a tolerance check

        return bool(np.allclose(out, exp, rtol=1e-07, atol=atol)), atol
    return bool(exact), atol
