"""Load a run configuration from YAML into the typed `Config` dataclasses.

A config file may start with `extends: base.yaml` (or a list of files): the bases are loaded first,
recursively, deep-merged in order, and then the file's own keys override them. `--set a.b=c`
overrides from the command line are applied last. The merged tree is converted strictly: unknown
keys and wrongly typed values raise `ConfigError` with one message that names the dotted key, the
file that set it (possibly a base file deep in an `extends` chain, or `--set`), and, for typos, the
closest valid key.

Only pyyaml and the standard library are used so `megadlm --help` stays fast.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import yaml

from megadlm.config.schema import Config
from megadlm.errors import ConfigError

__all__ = [
    "load_config",
    "find_config",
    "parse_override",
    "config_to_dict",
    "config_from_dict",
    "dump_config",
    "CONFIG_DIR",
]

# yaml_configs/ at the repository root, for `extends: presets/tiny.yaml` and bare preset names.
CONFIG_DIR = Path(__file__).resolve().parents[2] / "yaml_configs"

OVERRIDE_SOURCE = "--set"
EXTENDS_KEY = "extends"

# Dotted key -> the file (or "--set" / "<dict>") that last set it. Kept beside the merged tree so a
# bad value can be blamed on the file that actually contains it.
Sources = dict[str, str]


class _SafeLoader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-3` as a float.

    PyYAML implements YAML 1.1, where a float needs a dot (`1.0e-3`); plain `1e-3` would otherwise
    load as the string "1e-3" and fail the float type check, which surprises everyone.
    """


_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
# Drop the inherited float resolver and install the broader one, keyed by the same first chars.
_SafeLoader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:float"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_SafeLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_SafeLoader)  # noqa: S506 - _SafeLoader is a SafeLoader


# --------------------------------------------------------------------------------------------
# Finding files
# --------------------------------------------------------------------------------------------


def _candidates(name: str, base_dir: Optional[Path]) -> list[Path]:
    """Places a config name may refer to, most specific first."""
    names = [name] if name.endswith((".yaml", ".yml")) else [name, f"{name}.yaml", f"{name}.yml"]
    # None = as given (cwd-relative or absolute). An `extends:` entry is looked up next to the
    # including file instead, so a stray file in the cwd cannot shadow it.
    first: Optional[Path] = base_dir
    dirs: list[Optional[Path]] = [first, CONFIG_DIR, CONFIG_DIR / "presets"]
    out: list[Path] = []
    for d in dirs:
        for n in names:
            p = Path(n) if d is None else d / n
            if p not in out:
                out.append(p)
    return out


def find_config(name: str, base_dir: Optional[Union[str, Path]] = None) -> Path:
    """Resolve a config file name.

    Tries, in order: `base_dir/name` (the including file's directory) or, without base_dir, `name`
    as given, then `yaml_configs/name` and `yaml_configs/presets/name`, each also with `.yaml` appended,
    so a bare preset name like `tiny` finds yaml_configs/presets/tiny.yaml.
    """
    tried = _candidates(str(name), Path(base_dir) if base_dir is not None else None)
    for p in tried:
        if p.is_file():
            return p.resolve()
    where = ", ".join(str(p) for p in tried)
    raise ConfigError(f"config file not found: {name!r} (looked for {where})")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    try:
        data = _yaml_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(_yaml_error_message(path, e)) from None
    if data is None:  # an empty file is an empty config
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level of a config file must be a mapping of sections "
            f"(model:, data:, ...), got {_type_name(data)}"
        )
    return data


def _yaml_error_message(path: Path, e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(e, "problem", None) or str(e)
    context = getattr(e, "context", None)
    ctx_mark = getattr(e, "context_mark", None)
    # The problem is often only noticed lines later (an unclosed bracket at end of file), so also
    # point at where the construct being parsed started.
    if context and ctx_mark is not None and ctx_mark is not mark:
        problem = f"{problem} ({context} started at line {ctx_mark.line + 1})"
    elif context:
        problem = f"{context}: {problem}"
    return f"invalid YAML in {path}{where}: {problem}"


# --------------------------------------------------------------------------------------------
# Merging with provenance
# --------------------------------------------------------------------------------------------


def _forget(sources: Sources, key: str) -> None:
    """Drop provenance of everything under `key` (it is being replaced wholesale)."""
    prefix = key + "."
    for k in [k for k in sources if k.startswith(prefix)]:
        del sources[k]


def _record(sources: Sources, key: str, value: Any, source: str) -> None:
    sources[key] = source
    if isinstance(value, dict):
        for k, v in value.items():
            _record(sources, f"{key}.{k}", v, source)


def _merge(dst: dict, src: dict, sources: Sources, source: str, prefix: str = "") -> None:
    """Deep-merge `src` into `dst` in place: mappings merge key by key, anything else replaces."""
    for k, v in src.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            sources[key] = source
            _merge(dst[k], v, sources, source, key + ".")
        else:
            _forget(sources, key)
            dst[k] = _deepcopy(v)
            _record(sources, key, v, source)


def _deepcopy(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _deepcopy(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_deepcopy(x) for x in v]
    return v


def _extends_list(raw: Any, path: Path) -> list[str]:
    if raw is None:
        return []
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and all(isinstance(x, str) for x in raw):
        return list(raw)
    raise ConfigError(
        f"{EXTENDS_KEY}: must be a file name or a list of file names (in {path}), got {raw!r}"
    )


def _load_tree(path: Path, stack: tuple[Path, ...]) -> tuple[dict, Sources]:
    """Load `path` and everything it extends; returns the merged tree and its provenance."""
    if path in stack:
        chain = " -> ".join(str(p) for p in (*stack, path))
        raise ConfigError(f"{EXTENDS_KEY} cycle: {chain}; remove one of these {EXTENDS_KEY}: entries")
    own = _read_yaml(path)
    bases = _extends_list(own.pop(EXTENDS_KEY, None), path)

    tree: dict = {}
    sources: Sources = {}
    for name in bases:
        try:
            base_path = find_config(name, base_dir=path.parent)
        except ConfigError as e:
            raise ConfigError(f"{e} ({EXTENDS_KEY}: in {path})") from None
        base_tree, base_sources = _load_tree(base_path, (*stack, path))
        # Replay the base with its own provenance so errors point into the base file.
        _merge_with_sources(tree, sources, base_tree, base_sources)
    _merge(tree, own, sources, str(path))
    return tree, sources


def _merge_with_sources(tree: dict, sources: Sources, src: dict, src_sources: Sources) -> None:
    _merge(tree, src, sources, "<base>")
    for key, where in src_sources.items():
        if key in sources:
            sources[key] = where


# --------------------------------------------------------------------------------------------
# --set overrides
# --------------------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b=c` into (["a", "b"], value); the value is parsed as YAML (3, 1e-3, true, null)."""
    if "=" not in text:
        raise ConfigError(
            f"--set {text!r}: expected the form section.key=value (e.g. --set optim.lr=1e-3)"
        )
    key, raw = text.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise ConfigError(
            f"--set {text!r}: bad key {key!r}; expected the form section.key=value "
            "(e.g. --set optim.lr=1e-3)"
        )
    if raw.strip() == "":
        return parts, ""  # `--set data.path=` means the empty string, not null
    try:
        value = _yaml_load(raw)
    except yaml.YAMLError:
        value = raw  # not valid YAML (e.g. contains ": "): take it verbatim as a string
    return parts, value


def _apply_override(tree: dict, sources: Sources, text: str) -> None:
    parts, value = parse_override(text)
    node = tree
    for i, part in enumerate(parts[:-1]):
        key = ".".join(parts[: i + 1])
        child = node.get(part)
        if not isinstance(child, dict):
            # Creating the level lets conversion report the real problem (unknown key, or a
            # mapping given where a scalar belongs) with the usual suggestions.
            _forget(sources, key)
            child = node[part] = {}
            sources[key] = OVERRIDE_SOURCE
        node = child
    full = ".".join(parts)
    _forget(sources, full)
    node[parts[-1]] = value
    _record(sources, full, value, OVERRIDE_SOURCE)


# --------------------------------------------------------------------------------------------
# Conversion to dataclasses
# --------------------------------------------------------------------------------------------


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a float"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, dict):
        return "a mapping"
    if isinstance(v, list):
        return "a list"
    return type(v).__name__


_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _describe(tp: Any) -> str:
    args = _union_args(tp)
    if args is None:
        return _TYPE_WORDS.get(tp, getattr(tp, "__name__", str(tp)))
    words = [_describe(a) for a in args if a is not type(None)]
    if type(None) in args:
        words.append("null")
    return " or ".join(words)


def _union_args(tp: Any) -> Optional[tuple]:
    origin = typing.get_origin(tp)
    if origin is Union or origin is types.UnionType:
        return typing.get_args(tp)
    return None


_NO = object()  # sentinel: value does not match the type


def _coerce(value: Any, tp: Any) -> Any:
    """Return `value` converted to `tp`, or _NO. Strict: bools are not ints, 3.0 is not an int."""
    args = _union_args(tp)
    if args is not None:
        for a in args:
            if a is type(None):
                if value is None:
                    return None
                continue
            out = _coerce(value, a)
            if out is not _NO:
                return out
        return _NO
    if tp is bool:
        return value if isinstance(value, bool) else _NO
    if tp is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _NO
    if tp is float:
        if isinstance(value, bool):
            return _NO
        return float(value) if isinstance(value, (int, float)) else _NO
    if tp is str:
        return value if isinstance(value, str) else _NO
    return value if isinstance(value, tp) else _NO


def _unknown_key_message(
    key: str, name: str, valid: list[str], where: str, what: str, valid_label: str
) -> str:
    """One message: the key, where it was set, the closest valid name, and all valid names."""
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"{key}: unknown {what} (set in {where}).{hint} {valid_label}: {', '.join(valid)}"


def _int_hint(value: Any, tp: Any) -> str:
    """Integer fields are strict, but `1e9` reads as a float: say how to write it instead."""
    accepts_int = tp is int or int in (_union_args(tp) or ())
    if accepts_int and isinstance(value, float) and value.is_integer():
        return f"; write it as the integer {int(value)}"
    return ""


def _build_section(
    section: str, cls: type, raw: Any, sources: Sources, default_source: str
) -> Any:
    where = sources.get(section, default_source)
    if raw is None:  # `model:` with nothing under it
        return cls()
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{section}: must be a mapping of keys (set in {where}), got {_type_name(raw)} {raw!r}"
        )
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for k, v in raw.items():
        key = f"{section}.{k}"
        kwhere = sources.get(key, where)
        if not isinstance(k, str) or k not in hints:
            raise ConfigError(
                _unknown_key_message(
                    key, str(k), names, kwhere, f"key in section {section!r}", f"Valid {section} keys"
                )
            )
        out = _coerce(v, hints[k])
        if out is _NO:
            raise ConfigError(
                f"{key}: expected {_describe(hints[k])}, got {_type_name(v)} {v!r} (set in {kwhere})"
                + _int_hint(v, hints[k])
            )
        kwargs[k] = out
    return cls(**kwargs)


def _build_config(tree: dict, sources: Sources, default_source: str) -> Config:
    section_types = typing.get_type_hints(Config)
    names = [f.name for f in dataclasses.fields(Config)]
    kwargs: dict[str, Any] = {}
    for name, raw in tree.items():
        if not isinstance(name, str) or name not in section_types:
            where = sources.get(str(name), default_source)
            raise ConfigError(
                _unknown_key_message(str(name), str(name), names, where, "section", "Valid sections")
            )
        kwargs[name] = _build_section(name, section_types[name], raw, sources, default_source)
    return Config(**kwargs)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def load_config(path: Union[str, Path], overrides: Iterable[str] = ()) -> Config:
    """Load a YAML config (following `extends:`), apply `--set` overrides, and convert it strictly.

    `path` may also be a bare preset name (`tiny`); see `find_config`.
    """
    resolved = find_config(str(path))
    tree, sources = _load_tree(resolved, ())
    for text in overrides:
        _apply_override(tree, sources, text)
    return _build_config(tree, sources, str(resolved))


def config_from_dict(d: dict, source: str = "<dict>") -> Config:
    """Convert a plain dict (e.g. a run directory's resolved config.yaml) with the same strict checks."""
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: a config must be a mapping of sections, got {_type_name(d)}")
    tree = {k: v for k, v in d.items() if k != EXTENDS_KEY}
    sources: Sources = {}
    _record_all(sources, tree, source)
    return _build_config(tree, sources, source)


def _record_all(sources: Sources, tree: dict, source: str) -> None:
    for k, v in tree.items():
        _record(sources, str(k), v, source)


def config_to_dict(cfg: Config) -> dict:
    """Plain nested dict of the config (section -> key -> value)."""
    return dataclasses.asdict(cfg)


def dump_config(cfg: Config, path: Union[str, Path]) -> None:
    """Write the fully resolved config as YAML, in schema order, loadable by `load_config`."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8") as f:
        yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False, default_flow_style=False)
