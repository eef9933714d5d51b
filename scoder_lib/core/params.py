"""Reading `params/<profile>.yaml` strictly into the one `Config`: inheritance, one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from scoder_lib.core.config import REPO_ROOT, Config, ConfigError

PARAMS_DIR = REPO_ROOT / "params"
# Keys that moved: where they live now (a params file written for the old place gets told).
MOVED = {"evaluate.livecodebench_folder": "benchmarks.livecodebench_folder"}


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Walk the schema along `loc` (minus its last part) and list the fields allowed there."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            continue
        field = current.model_fields.get(part)
        if field is None:
            return []
        ann = field.annotation
        current = _first_model(ann)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return []


def _first_model(ann: Any) -> Any:
    """The BaseModel inside Optional[...] / list[...] annotations, if any."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()) or ():
        found = _first_model(arg)
        if found is not None:
            return found
    return None


def _one_line(path: Path, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = tuple(first["loc"])
    key = ".".join(str(p) for p in loc) or "<top>"
    if first["type"] == "extra_forbidden" and key in MOVED:
        return f"{path}: key '{key}' has moved: write it as '{MOVED[key]}'"
    if first["type"] == "extra_forbidden":
        allowed = _allowed_keys(Config, loc)
        return f"{path}: unknown key '{key}'; allowed here: {', '.join(allowed)}"
    if first["type"] == "missing":
        return f"{path}: missing required key '{key}'"
    more = f" (and {len(err.errors()) - 1} more problems)" if len(err.errors()) > 1 else ""
    return f"{path}: key '{key}': {first['msg']} (got {first.get('input')!r}){more}"


def load_config(profile_or_path: str) -> Config:
    """Load `params/<profile>.yaml` (or a YAML path); raise ConfigError with a one-line message."""
    path = Path(profile_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = PARAMS_DIR / f"{profile_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PARAMS_DIR.glob("*.yaml")))
        raise ConfigError(f"{path}: no such params file; profiles: {known}")
    raw = _inherit(path, _read(path), depth=0)
    raw["profile"] = path.stem
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_one_line(path, exc)) from None
    _check_paths(path, cfg)
    return cfg


def _read(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return raw


def _inherit(path: Path, raw: dict[str, Any], depth: int) -> dict[str, Any]:
    """Resolve `inherit: <profile>` by deep-merging this file over its parent."""
    parent = raw.get("inherit")
    if not parent:
        return raw
    if depth > 4:
        raise ConfigError(f"{path}: 'inherit' chain is too deep (a cycle?)")
    ppath = PARAMS_DIR / f"{parent}.yaml"
    if not ppath.is_file():
        raise ConfigError(f"{path}: key 'inherit': no profile '{parent}' in {PARAMS_DIR}")
    return _merge(_inherit(ppath, _read(ppath), depth + 1), raw)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _check_paths(path: Path, cfg: Config) -> None:
    """Paths that must exist before any work starts."""
    for i, src in enumerate(cfg.preprocess.sources):
        if src.kind == "folder" and not cfg.resolve(src.path or "").is_dir():
            raise ConfigError(f"{path}: key 'preprocess.sources.{i}.path': folder {src.path!r} does not exist")
        if src.kind == "files" and not list(cfg.resolve(src.path or "").parent.glob(Path(src.path or "").name)):
            raise ConfigError(f"{path}: key 'preprocess.sources.{i}.path': no file matches {src.path!r}")
    lcb = cfg.benchmarks.livecodebench_folder
    for key, names in [
        ("evaluate.benchmarks", cfg.evaluate.benchmarks),
        ("preprocess.decontam.benchmarks", cfg.preprocess.decontam.benchmarks),
    ]:
        if "livecodebench" in names and lcb is None:
            raise ConfigError(
                f"{path}: key '{key}' names livecodebench: set benchmarks.livecodebench_folder to the folder "
                "with its release JSONL files"
            )
    if lcb is not None and not cfg.resolve(lcb).is_dir():
        raise ConfigError(f"{path}: key 'benchmarks.livecodebench_folder': folder {lcb!r} does not exist")
