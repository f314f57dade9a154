"""Typed configuration: dataclasses with field docstrings, YAML load/save, and CLI flags generated from them.

The model is Bergson's ``config/config_io.py``: a config is a (nested) dataclass whose fields carry a
docstring each (the string literal right below the field); from the same fields come

* :func:`from_dict` / :func:`load_yaml` — build the dataclass from a mapping, nested sections included;
  an unknown key is an error that names the key (with its dotted path) and the file;
* :func:`to_dict` / :func:`save_yaml` — the resolved config (every default filled in), written into the
  artefact folder it produced;
* :func:`typer_params` / :func:`command_from` — the typer options of a CLI command, one flag per field,
  whose default *is* the field default (so every default lives in one place); nested sections become
  dotted flags (``--student.epochs``);
* :func:`section_of` — a config section built from a stage's own config class (e.g. the ``student``
  section of a run is :class:`influcoder.student.distill.DistillConfig` without its file paths), so the stage
  and the run share fields, docstrings and defaults (the run's tree: :mod:`influcoder.run.config`).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import json
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

from .errors import UserError

__all__ = [
    "ConfigError",
    "field_docs",
    "section_of",
    "from_dict",
    "to_dict",
    "load_yaml",
    "save_yaml",
    "config_hash",
    "typer_params",
    "command_from",
    "config_from_flags",
    "merged",
    "differences",
    "flag_for",
]


class ConfigError(UserError):
    """A config that cannot be read: unknown key, wrong type, invalid value. The message names file and key."""


# ------------------------------------------------------------------------------------------ docstrings
@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` from the string literals placed right below each field in the class body
    (inherited classes first); fields made by :func:`section_of` carry theirs in ``metadata["help"]``."""
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__[:-1]):
        try:
            src = textwrap.dedent(inspect.getsource(base))
        except (OSError, TypeError):
            continue
        try:
            tree = ast.parse(src)
        except SyntaxError:
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for a, b in zip(body, body[1:]):
            if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr) \
                    and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str):
                docs[a.target.id] = " ".join(b.value.value.split())
    if dataclasses.is_dataclass(cls):
        for f in dataclasses.fields(cls):
            if f.metadata.get("help"):
                docs[f.name] = f.metadata["help"]
    return docs


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # pragma: no cover - made-up classes
        return {f.name: f.type for f in dataclasses.fields(cls)}


def section_of(cls: type, name: str, *, include: Sequence[str] | None = None, exclude: Iterable[str] = (),
               defaults: dict[str, Any] | None = None, extra: Sequence[tuple[str, Any, Any, str]] = (),
               doc: str | None = None, validate: Callable[[Any], None] | None = None) -> type:
    """A dataclass ``name`` with the fields of ``cls`` (``include`` only, or all but ``exclude``), their
    types, defaults and docstrings; ``defaults`` gives a default to fields that have none (or a new one),
    ``extra`` adds ``(name, type, default, docstring)`` fields; ``validate(section)`` runs in
    ``__post_init__`` (e.g. building the stage config with placeholder paths, so its own checks apply)."""
    hints, docs, defaults = _hints(cls), field_docs(cls), dict(defaults or {})
    exclude = set(exclude)
    made = []
    for f in dataclasses.fields(cls):
        if (include is not None and f.name not in include) or f.name in exclude:
            continue
        kw: dict[str, Any] = {"metadata": {"help": docs.get(f.name, "")}}
        if f.name in defaults:
            d = defaults.pop(f.name)
            kw["default_factory" if callable(d) and not isinstance(d, type) else "default"] = d
        elif f.default is not dataclasses.MISSING:
            kw["default"] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            kw["default_factory"] = f.default_factory
        else:
            raise TypeError(f"section_of({cls.__name__}): field {f.name} needs a default")
        made.append((f.name, hints[f.name], dataclasses.field(**kw)))
    if defaults:
        raise TypeError(f"section_of({cls.__name__}): no fields {sorted(defaults)}")
    for fname, ftype, fdefault, fdoc in extra:
        kw = {"metadata": {"help": fdoc}}
        kw["default_factory" if isinstance(fdefault, (list, dict)) else "default"] = (
            (lambda v=fdefault: type(v)(v)) if isinstance(fdefault, (list, dict)) else fdefault)
        made.append((fname, ftype, dataclasses.field(**kw)))
    ns = {"__doc__": doc or f"The fields of {cls.__name__} that a run sets (see its documentation)."}
    if validate is not None:
        ns["__post_init__"] = lambda self: validate(self)
    return dataclasses.make_dataclass(name, made, namespace=ns)


# ------------------------------------------------------------------------------------------ dict / YAML
def _origin(tp: Any) -> tuple[Any, bool]:
    """(inner type, optional?) of ``X | None`` / ``Optional[X]``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _coerce(value: Any, tp: Any, where: str) -> Any:
    inner, optional = _origin(tp)
    if value is None:
        if optional or inner is Any:
            return None
        raise ConfigError(f"{where}: may not be empty (null)")
    if dataclasses.is_dataclass(inner):
        if isinstance(value, inner):
            return value
        if isinstance(value, str) and "path" in {f.name for f in dataclasses.fields(inner)}:
            value = {"path": value}  # a data spec given as its path alone
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {inner.__name__} fields, got {type(value).__name__}")
        return from_dict(inner, value, where=where)
    origin = typing.get_origin(inner)
    if inner is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if inner is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{where}: expected a whole number, got {value!r}")
        return int(value)
    if inner is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if inner is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if inner is list or origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(inner) or (Any,)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if inner is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def _at(where: str) -> str:
    return f"{where}: " if where else ""


def from_dict(cls: type, data: dict, *, where: str = "") -> Any:
    """Build ``cls`` from a mapping (nested mappings become nested sections). Unknown keys, missing
    required keys and wrong types raise :class:`ConfigError` naming ``where.key``; the dataclass's own
    validation (``__post_init__``) errors are prefixed with ``where``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{_at(where)}expected a mapping, got {type(data).__name__}")
    hints = _hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in known]
    if unknown:
        raise ConfigError(f"{_at(where)}unknown key '{unknown[0]}'" + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
                          + f"; {cls.__name__} has: {', '.join(known)}")
    kwargs = {}
    for name, f in known.items():
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], f"{where}.{name}" if where else name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_at(where)}missing required key '{name}'")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except UserError as e:
        raise ConfigError(f"{_at(where)}{e}") from None


def to_dict(cfg: Any) -> dict:
    """Plain, JSON/YAML-ready mapping of a (nested) config dataclass; tuples become lists."""
    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v
    return plain(cfg)


def load_yaml(cls: type, path: str | Path) -> Any:
    """Read a YAML file into ``cls``; every problem names the file (and the key)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    try:
        return from_dict(cls, raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def save_yaml(cfg: Any, path: str | Path, header: str = "") -> Path:
    """Write the resolved config as YAML (atomically), keys in field order, with an optional comment header."""
    import yaml

    from .fileio import atomic_write_text

    text = yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True, default_flow_style=False)
    if header:
        text = "".join(f"# {line}\n" for line in header.splitlines()) + text
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    return Path(path)


def differences(old: Any, new: Any, *, width: int = 120) -> list[str]:
    """Where two saved configs (dataclasses or mappings, nested) differ, one line per leaf with both values:
    ``"student.epochs: 3 (saved) vs 7 (now)"`` — what a refusal to reuse an artefact prints."""
    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        d = to_dict(d) if dataclasses.is_dataclass(d) else d
        if not isinstance(d, dict):
            return {prefix.rstrip("."): d}
        out: dict[str, Any] = {}
        for k, v in d.items():
            if isinstance(v, dict) and v:
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    def show(v: Any) -> str:
        text = json.dumps(v, default=str)
        return text if len(text) <= width else text[: width - 1] + "…"

    a, b = flat(old), flat(new)
    return [f"{k}: {show(a.get(k))} (saved) vs {show(b.get(k))} (now)" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)]


def config_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of a config (dataclass or mapping)."""
    import hashlib

    d = to_dict(obj) if dataclasses.is_dataclass(obj) else obj
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


# ------------------------------------------------------------------------------------------ CLI flags
def flag_for(name: str, prefix: str = "") -> str:
    """The flag of a field: ``--field-name`` (a section's field: ``--section.field-name``)."""
    return "--" + prefix + name.replace("_", "-")


def _typer_type(tp: Any) -> Any:
    inner, optional = _origin(tp)
    if typing.get_origin(inner) is list or inner is list:
        (item,) = typing.get_args(inner) or (str,)
        return typing.List[item]
    if inner in (str, int, float, bool):
        return Optional[inner] if optional else inner
    return Optional[str] if optional else str  # anything else is given as text


def typer_params(cls: type, *, prefix: str = "", flags: dict[str, str] | None = None, exclude: Iterable[str] = (),
                 required: Iterable[str] = (), shown: Iterable[str] | None = None,
                 aliases: dict[str, str] | None = None, base: Any = None) -> list[inspect.Parameter]:
    """One keyword-only typer option per field of ``cls`` (nested dataclass fields recurse with a
    ``section.`` flag prefix). The parameter name is the dotted path with ``__`` (``student__epochs``).
    ``flags`` renames flags by field name; a field without a default (or named in ``required``) is required;
    a section without a default (e.g. a command's ``data: DataSpec``) makes its ``path`` required.
    ``aliases``: more flag names by dotted field path (``{"data.preset": "--preset"}``; for a true/false field,
    ``"/--no-ood"`` adds an off-name), the short flags a command keeps beside the generated ones.
    ``shown``: the parameter names ``--help`` lists (the others work as usual and are listed by ``--help-all``;
    None: all). ``base``: an instance of ``cls`` whose values are the flags' defaults (a shipped config's)."""
    import typer

    flags, exclude, required, aliases = dict(flags or {}), set(exclude), set(required), dict(aliases or {})
    hints, docs = _hints(cls), field_docs(cls)
    out: list[inspect.Parameter] = []
    for f in dataclasses.fields(cls):
        if f.name in exclude or prefix + f.name in exclude:
            continue
        tp = hints[f.name]
        inner, _ = _origin(tp)
        pname = (prefix.replace(".", "__") + f.name)
        if dataclasses.is_dataclass(inner):
            no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            out += typer_params(inner, prefix=prefix + f.name + ".", shown=shown, aliases=aliases,
                                exclude={e for e in exclude if "." in e},
                                required=("path",) if no_default else (),
                                base=getattr(base, f.name) if base is not None else None)
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = ...
        if base is not None:
            default = getattr(base, f.name)
        if f.name in required:
            default = ...
        flag = flags.get(f.name, flag_for(f.name, prefix))
        ttype = _typer_type(tp)
        if inner is bool:
            flag = f"{flag}/--{prefix}no-{flag[2 + len(prefix):]}"
        if isinstance(default, (list, tuple)):
            default = list(default) or None
        hidden = shown is not None and pname not in set(shown) and default is not ...
        more = [(" " + a if a.startswith("/") else a) for a in aliases.get(prefix + f.name, "").split()]
        opt = typer.Option(default, flag, *more, help=_first_sentence(docs.get(f.name, "")), hidden=hidden)
        opt.full_help = docs.get(f.name, "")  # what --help-all prints
        out.append(inspect.Parameter(pname, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=ttype))
    return out


def merged(base: dict, over: dict) -> dict:
    """``base`` with ``over`` written over it, nested mappings merged key by key (neither is changed)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def config_from_flags(cls: type, values: dict[str, Any], *, base: dict | None = None,
                      where: str = "command line") -> Any:
    """``cls`` built from a generated command's values (``section__field`` names nest) written over ``base`` (a
    mapping of the config, e.g. a YAML file's), with every check of :func:`from_dict` (the error names the key)."""
    d: dict[str, Any] = {}
    for name, value in values.items():
        if value is None:
            continue  # a flag not given whose default is None (or an empty list): the field's default applies
        *sections, leaf = name.split("__")
        node = d
        for s in sections:
            node = node.setdefault(s, {})
        node[leaf] = list(value) if isinstance(value, (list, tuple)) else value
    return from_dict(cls, merged(base or {}, d), where=where)


def _first_sentence(doc: str) -> str:
    """--help shows a field's first sentence (its whole docstring: --help-all, and the config classes)."""
    doc = " ".join(doc.split())
    i = doc.find(". ")
    if 0 < i < 100:
        return doc[: i + 1]
    return doc if len(doc) <= 100 else doc[:97].rsplit(" ", 1)[0] + " …"


def _help_all(params: list[inspect.Parameter]):
    """The eager ``--help-all`` callback: every generated option with its default and the first line of its doc."""
    def show(value: bool):
        if not value:
            return
        import typer

        lines = ["Every option (a config key; --help lists the common ones):", ""]
        for p in params:
            opt = p.default
            flag = opt.param_decls[0].split("/")[0] if opt.param_decls else "--" + p.name
            default = "required" if opt.default is ... else repr(opt.default)
            doc = " ".join(getattr(opt, "full_help", opt.help or "").split())
            lines.append(f"  {flag}  [{default}]\n      {doc}")
        print("\n".join(lines))
        raise typer.Exit()
    return show


def command_from(cls: type, body: Callable[..., Any], *, flags: dict[str, str] | None = None,
                 exclude: Iterable[str] = (), extra: Sequence[inspect.Parameter] = (), doc: str | None = None,
                 context: bool = False, shown: Iterable[str] | None = None,
                 aliases: dict[str, str] | None = None, required: Iterable[str] = (),
                 base: Any = None, sections: dict[str, type] | None = None) -> Callable[..., Any]:
    """A typer command function whose options are generated from ``cls``'s fields (see
    :func:`typer_params`) plus ``extra`` parameters; it calls ``body(values, extras)`` with the field
    values (``{field: value}``; :func:`config_from_flags` builds the config from them) and the extra values
    (``{name: value}``, ``ctx`` included with ``context``).
    ``shown``: the generated options ``--help`` lists (one screen); ``--help-all`` then lists every one.
    ``base``: an instance whose values are the defaults the flags show (see :func:`typer_params`).
    ``sections``: more config classes of the command that are not fields of ``cls`` (e.g. ``{"ray": RayConfig}``):
    their flags are ``--ray.<field>`` (and ``aliases``), and ``body`` finds the built section in ``extras["ray"]``."""
    import typer

    params = typer_params(cls, flags=flags, exclude=exclude, shown=shown, aliases=aliases, required=required, base=base)
    sections = dict(sections or {})
    section_params = {name: typer_params(sec, prefix=name + ".", shown=shown, aliases=aliases)
                      for name, sec in sections.items()}
    section_names = {p.name: name for name, ps in section_params.items() for p in ps}
    params_all = params + [p for ps in section_params.values() for p in ps]
    # every generated command lists its options in full with --help-all
    extra = list(extra) + [inspect.Parameter(
        "help_all", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
        default=typer.Option(False, "--help-all", is_eager=True, expose_value=False, callback=_help_all(params_all),
                             help="List every option (each config key) with its default, and exit."))]
    names = {p.name for p in params}
    lead = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)] if context else []
    positional = [p for p in extra if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    keyword = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in extra if p not in positional]

    def command(*args, **kwargs):
        bound = dict(zip([p.name for p in lead + positional], args))
        bound.update(kwargs)
        values = {k: v for k, v in bound.items() if k in names}
        extras = {k: v for k, v in bound.items() if k not in names and k not in section_names}
        for name, sec in sections.items():
            extras[name] = config_from_flags(sec, {k.split("__", 1)[1]: v for k, v in bound.items()
                                                   if section_names.get(k) == name})
        return body(values, extras)

    command.__signature__ = inspect.Signature(lead + positional + params_all + keyword)
    command.__doc__ = doc or cls.__doc__
    command.__name__ = getattr(body, "__name__", "command")
    command.config_class = cls  # for tests: which dataclass the flags come from
    command.config_flags = {p.name: p.default for p in params}
    return command
