"""Code extraction from model output (scoder_lib.sanitize)."""

from __future__ import annotations

from scoder_lib.evaluation.sanitize import definitions_of, import_bindings, referenced_names, sanitize

CHATTY = """Sure! Here is my solution:

```python
import math
from typing import List

def helper(x):
    return x * 2

def unrelated():
    return "noise"

def f(xs: List[int]) -> int:
    return sum(helper(x) for x in xs) + OFFSET

OFFSET = 3

print(f([1, 2]))
assert f([1]) == 5
if __name__ == "__main__":
    print(f([4]))
```

Example usage:
```python
print(f([3]))
```
"""


def test_picks_the_block_defining_the_entry_point_and_trims_test_code():
    code, changed = sanitize(CHATTY, "f")
    assert changed
    assert "import math" in code and "from typing import List" in code
    assert "def helper" in code and "def f(" in code and "OFFSET = 3" in code
    for gone in ("unrelated", "print(", "assert ", "__main__"):
        assert gone not in code
    namespace: dict = {}
    exec(code, namespace)
    assert namespace["f"]([1]) == 5


def test_clean_code_is_reported_unchanged():
    code = "import os\n\n\ndef f(x):\n    # keep me\n    return os.sep + x\n"
    out, changed = sanitize(code, "f")
    assert not changed and "def f(x)" in out


def test_prefilled_response_without_opening_fence():
    # EvalPlus's chat prompt ends inside an opened ```python block: the reply starts with code.
    out, changed = sanitize("def f(x):\n    return x + 1\n```\n\nThis adds one.", "f")
    assert out.strip() == "def f(x):\n    return x + 1" and changed


def test_prose_around_unfenced_code_uses_the_longest_parsable_span():
    text = "Here you go. It is simple.\ndef f(x):\n    return x * 3\nHope this helps!"
    out, _ = sanitize(text, "f")
    assert out.strip() == "def f(x):\n    return x * 3"


def test_later_definition_wins_and_non_python_blocks_are_ignored():
    text = (
        "```bash\npip install nothing\n```\n```python\ndef f():\n    return 1\n```\n"
        "Fixed version:\n```python\ndef g():\n    return 2\n\ndef f():\n    return g()\n```"
    )
    out, _ = sanitize(text, "f")
    ns: dict = {}
    exec(out, ns)
    assert ns["f"]() == 2 and "pip" not in out


def test_keep_preserves_helpers_the_tests_call():
    prompt = "def encode(s):\n    return s[::-1]\n\ndef decode(s):\n    return s[::-1]\n"
    dropped, _ = sanitize(prompt, "decode")
    kept, _ = sanitize(prompt, "decode", keep=referenced_names("assert decode(encode('ab')) == 'ab'"))
    assert "def encode" not in dropped and "def encode" in kept


def test_untrimmed_mode_keeps_top_level_script_code():
    script = "```python\nn = int(input())\nprint(n * 2)\n```"
    out, changed = sanitize(script, None, trim=False)
    assert out.strip() == "n = int(input())\nprint(n * 2)" and changed


def test_text_without_code_stays_unparsable_but_does_not_crash():
    out, changed = sanitize("I cannot solve this problem.", "f")
    assert isinstance(out, str) and isinstance(changed, bool)


def test_constants_before_the_first_def_survive_an_unparsable_block():
    """A truncated block is cut to its longest parsable span; the span may start at a constant, not
    only at a def (EvalPlus's code_extract tries every line)."""
    out, _ = sanitize("```python\nMOD = 7\ndef f(n):\n    return n % MOD\nprint(f(\n```", "f")
    assert out.strip() == "MOD = 7\ndef f(n):\n    return n % MOD"
    ns: dict = {}
    exec(out, ns)
    assert ns["f"](9) == 2


def test_definitions_of_and_import_bindings():
    prompt = "import math\nimport os\n\nK = 2\n\ndef poly(x):\n    return math.pow(x, K)\n\ndef f(x):\n    pass\n"
    helpers = definitions_of(prompt, {"poly", "f", "check"}, exclude={"f"})
    assert helpers.splitlines() == ["import math", "K = 2", "def poly(x):", "    return math.pow(x, K)"]
    assert definitions_of(prompt, {"f"}, exclude={"f"}) == "" == definitions_of("not python(", {"poly"})
    solution = (
        "from __future__ import annotations\nimport os.path, re as regex\nfrom x import *\nfrom a.b import c, d as e\n"
    )
    assert import_bindings(solution + "def f():\n    import datetime\n") == [
        ("os", "import os.path"),
        ("regex", "import re as regex"),
        ("c", "from a.b import c"),
        ("e", "from a.b import d as e"),
    ]
