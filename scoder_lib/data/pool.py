"""Mining code snippets: sources (stdlib, folders, jsonl/parquet, HF datasets), `ast` extraction, filters.

Every rejected file or snippet is kept with its reason, so the filter can be audited.
"""

from __future__ import annotations

import ast
import glob
import json
import random
import sysconfig
import textwrap
from collections.abc import Collection, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import datasets
import pyarrow.parquet as pq

from scoder_lib.core.config import Config, ExtractOptions, SourceOptions
from scoder_lib.core.hashing import fingerprint
from scoder_lib.core.logs import Progress, get_logger
from scoder_lib.data.codetokens import normalize

log = get_logger(__name__)
REJECT_TEXT_CHARS = 400  # rejected text is kept truncated; path + lines locate the rest


@dataclass(frozen=True)
class Snippet:
    id: str
    text: str
    source: str
    path: str
    name: str
    kind: str  # function | method | class
    lineno: int
    end_lineno: int

    @property
    def n_lines(self) -> int:
        return self.text.count("\n") + 1

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "n_lines": self.n_lines, "n_chars": len(self.text)}


@dataclass(frozen=True)
class Rejected:
    reason: str
    source: str
    path: str
    name: str = ""
    lineno: int = 0
    text: str = ""
    detail: str = ""  # e.g. the id a duplicate repeats, the benchmark task a snippet matches

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "text": self.text[:REJECT_TEXT_CHARS]}


# ----------------------------------------------------------------------------- sources
def _walk_py(root: Path, label: str, skip_dirs: tuple[str, ...] = ()) -> Iterator[tuple[str, str, bytes | None]]:
    for path in sorted(root.rglob("*.py")):
        if skip_dirs and any(part in skip_dirs for part in path.relative_to(root).parts):
            continue
        try:
            yield label, str(path.relative_to(root)), path.read_bytes()
        except OSError:
            yield label, str(path.relative_to(root)), None


def _iter_table_rows(path: Path, column: str) -> Iterator[tuple[str, Any]]:
    """Stream (row label, code) from a .jsonl or .parquet file without loading it whole."""
    if path.suffix == ".parquet":
        pf = pq.ParquetFile(path)
        n = 0
        for batch in pf.iter_batches(batch_size=1024, columns=[column]):
            for value in batch.column(0).to_pylist():
                yield f"{path.name}:{n}", value
                n += 1
        return
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh):
            if line.strip():
                yield f"{path.name}:{n}", json.loads(line).get(column)


def iter_source(src: SourceOptions, cfg: Config) -> Iterator[tuple[str, str, bytes | None]]:
    """(source label, file label, raw bytes or None if unreadable) for every file of a source."""
    if src.kind == "stdlib":
        # Why skip: pyenv and distro Pythons keep installed packages inside the stdlib folder.
        yield from _walk_py(Path(sysconfig.get_paths()["stdlib"]), "stdlib", ("site-packages", "dist-packages"))
    elif src.kind == "folder":
        yield from _walk_py(cfg.resolve(src.path or ""), f"folder:{src.path}")
    elif src.kind == "files":
        pattern = str(cfg.resolve(src.path or ""))
        for path in sorted(glob.glob(pattern)):
            for label, code in _iter_table_rows(Path(path), src.column):
                yield f"files:{src.path}", label, code.encode("utf-8") if isinstance(code, str) else None
    else:
        yield from _iter_hf(src)
    return


def _iter_hf(src: SourceOptions) -> Iterator[tuple[str, str, bytes | None]]:
    """A hub dataset (The Stack style), streamed: never loaded whole into memory."""

    ds = datasets.load_dataset(src.dataset, data_dir=src.data_dir, split=src.split, streaming=True)
    for n, row in enumerate(ds):
        if src.max_files is not None and n >= src.max_files:
            break
        code = row.get(src.column)
        label = str(row.get("path") or row.get("max_stars_repo_path") or n)
        yield f"hf:{src.dataset}", label, code.encode("utf-8") if isinstance(code, str) else None


# ----------------------------------------------------------------------------- extraction
def _file_reject(path: str, text: str, opts: ExtractOptions) -> str | None:
    parts = set(Path(path.lower()).parts) | {Path(path.lower()).stem}
    lowered = path.lower().replace("\\", "/")
    for pat in opts.skip_path_patterns:
        if "/" in pat and pat in lowered:
            return "vendored_path"
        if pat in parts or any(p.startswith(f"{pat}_") or p.endswith(f"_{pat}") for p in parts):
            return "test_or_vendored_path"
    head = text[:2000].lower()
    if any(marker in head for marker in opts.skip_generated_markers):
        return "generated_file"
    return None


def _nodes(tree: ast.Module, kinds: list[str]) -> Iterator[tuple[ast.AST, str]]:
    """Top-level functions and classes, and methods of top-level classes (no nested functions)."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and "function" in kinds:
            yield node, "function"
        elif isinstance(node, ast.ClassDef):
            if "class" in kinds:
                yield node, "class"
            if "method" in kinds:
                for sub in node.body:
                    if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        yield sub, "method"


def _segment(lines: list[str], node: Any) -> tuple[str, int]:
    start = min([d.lineno for d in node.decorator_list] + [node.lineno])
    return textwrap.dedent("".join(lines[start - 1 : node.end_lineno])).rstrip() + "\n", start


def snippet_reject(text: str, opts: ExtractOptions) -> str | None:
    """Why a snippet fails the per-snippet filters, or None if it passes."""
    n_lines = text.count("\n") + (0 if text.endswith("\n") else 1)
    if n_lines < opts.min_lines:
        return "too_few_lines"
    if n_lines > opts.max_lines:
        return "too_many_lines"
    if len(text) < opts.min_chars:
        return "too_short"
    if len(text) > opts.max_chars:
        return "too_long"
    if max(len(line) for line in text.splitlines()) > opts.max_line_length:
        return "long_line"
    printable = sum(c.isascii() and (c.isprintable() or c in "\n\t") for c in text)
    if printable / len(text) < opts.min_ascii_fraction:
        return "non_ascii"
    if sum(c.isalpha() for c in text) / len(text) < opts.min_alpha_fraction:
        return "low_alpha"
    try:
        ast.parse(text)
    except SyntaxError:
        return "snippet_syntax"
    return None


def extract_file(
    source: str, path: str, raw: bytes | None, opts: ExtractOptions
) -> tuple[list[Snippet], list[Rejected]]:
    """Snippets of one file, and what was rejected (the whole file, or single snippets) with why."""
    if raw is None:
        return [], [Rejected("unreadable", source, path)]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return [], [Rejected("not_utf8", source, path)]
    why = _file_reject(path, text, opts)
    if why:
        return [], [Rejected(why, source, path)]
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return [], [Rejected("file_syntax", source, path)]
    lines = text.splitlines(keepends=True)
    keep, rejects = [], []
    for node, kind in _nodes(tree, opts.kinds):
        seg, start = _segment(lines, node)
        name = getattr(node, "name", "")
        why = snippet_reject(seg, opts)
        if why:
            rejects.append(Rejected(why, source, path, name, start, seg))
        else:
            sid = fingerprint([source, path, start, seg])
            keep.append(Snippet(sid, seg, source, path, name, kind, start, node.end_lineno or start))
    return keep, rejects


def mine(cfg: Config) -> tuple[list[Snippet], list[Rejected], dict[str, int]]:
    """All sources -> snippets passing the filters, rejects, and file counts per source."""

    snippets: list[Snippet] = []
    rejects: list[Rejected] = []
    files: dict[str, int] = {}
    for src in cfg.preprocess.sources:
        progress = Progress(total=None, desc=f"mining {src.kind}", unit="files", every_s=20)
        for source, path, raw in iter_source(src, cfg):
            keep, rej = extract_file(source, path, raw, cfg.preprocess.extract)
            snippets += keep
            rejects += rej
            files[source] = files.get(source, 0) + 1
            progress.update()
        progress.close()
    return snippets, rejects, files


def snippet_key(text: str) -> str:
    """Identity of a snippet across stages and Python versions: its normalized text."""

    return fingerprint(normalize(text))


def source_file(entry: dict[str, Any]) -> str:
    """`<origin>:<path>` of a pool snippet (the form of a seed snippet's source file); '' if unknown."""
    return f"{entry.get('source', '')}:{entry['path']}" if entry.get("path") else ""


def allocate(
    pool: list[dict[str, Any]],
    exclude: set[str],
    n: int,
    seed: int,
    salt: str,
    exclude_files: Collection[str] = frozenset(),
) -> list[dict[str, Any]]:
    """n pool snippets not in `exclude` (snippet keys) nor from `exclude_files`, in a seeded order
    private to `salt`.

    Why salted: each consumer (iteration t, final synthesis) draws from its own deterministic
    order, so changing one stage's size never reshuffles another's snippets.
    Why files: the held-out yardstick's snippets come from source files that nothing trains on; a
    sibling snippet of the same file in a synthesizer's or a student's data would leak its context
    (and favour the arms whose data is synthesized from the pool over the teacher's).
    """

    order = list(range(len(pool)))
    random.Random(f"{seed}:{salt}").shuffle(order)
    out = []
    for i in order:
        if len(out) == n:
            break
        if snippet_key(pool[i]["text"]) not in exclude and source_file(pool[i]) not in exclude_files:
            out.append(pool[i])
    if len(out) < n:
        raise ValueError(
            f"the pool has only {len(out)} unused snippets, {n} needed: "
            f"lower the sizes or add sources (preprocess.sources)"
        )
    return out
