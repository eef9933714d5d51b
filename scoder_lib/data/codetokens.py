"""Code tokenization shared by dedup (shingles) and decontamination (n-grams)."""

from __future__ import annotations

import builtins
import keyword
import re
import zlib

# String literals first (so '#' inside strings is not a comment), then comments, names, numbers, symbols.
_TOKEN = re.compile(
    r"""(?P<str>[rRbBuUfF]{0,2}(?:'''[\s\S]*?'''|\"\"\"[\s\S]*?\"\"\"|'(?:\\.|[^'\\\n])*'|"(?:\\.|[^"\\\n])*"))"""
    r"""|(?P<comment>\#[^\n]*)"""
    r"""|(?P<name>[A-Za-z_]\w*)"""
    r"""|(?P<num>\d[\w.]*)"""
    r"""|(?P<sym>[^\s\w])"""
)
_WORD = re.compile(r"[a-z0-9]+")
_KEEP = frozenset(keyword.kwlist) | frozenset(keyword.softkwlist) | frozenset(dir(builtins)) | {"self", "cls"}


def code_tokens(text: str, abstract: bool = False) -> list[str]:
    """Lower-cased tokens without comments; string literals split into words.

    abstract=True replaces user identifiers with "V", so renaming variables or functions does not
    hide a copy (keywords, builtins and the words inside strings stay as they are).
    """
    out: list[str] = []
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup
        if kind == "comment":
            continue
        tok = m.group()
        if kind == "str":
            out.extend(_WORD.findall(tok.lower()))
        elif kind == "name":
            out.append(tok.lower() if (not abstract or tok in _KEEP) else "V")
        else:
            out.append(tok)
    return out


def ngram_hashes(tokens: list[str], n: int) -> set[int]:
    """Hashes of all token n-grams (the whole sequence if shorter than n)."""
    if len(tokens) < n:
        return {zlib.crc32("\x1f".join(tokens).encode())} if tokens else set()
    return {zlib.crc32("\x1f".join(tokens[i : i + n]).encode()) for i in range(len(tokens) - n + 1)}


def normalize(text: str) -> str:
    """Comment-free, whitespace-collapsed, lower-cased token string (exact-dedup key, substring search)."""
    return " ".join(code_tokens(text))
