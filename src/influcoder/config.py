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
  section of a run is :class:`influcoder.distill.DistillConfig` without its file paths), so the stage
  and the run share fields, docstrings and defaults.
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
    "flag_for",
    "RunConfig",
    "STEPS",
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


SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"
"""Run configs installed with the package (``influcoder run demo`` = ``influcoder/configs/demo.yaml``)."""


def find_run_config(name_or_path: str | Path) -> Path:
    """A run config given as a file path, or by the name of a config shipped with the package (``demo``)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    shipped = SHIPPED_CONFIGS / f"{p.name.removesuffix('.yaml')}.yaml"
    if p.parent == Path(".") and shipped.is_file():
        return shipped
    names = ", ".join(sorted(f.stem for f in SHIPPED_CONFIGS.glob("*.yaml")))
    raise ConfigError(f"{p}: config file not found (give a YAML file, or the name of a shipped config: {names})")


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
                 required: Iterable[str] = (), shown: Iterable[str] | None = None) -> list[inspect.Parameter]:
    """One keyword-only typer option per field of ``cls`` (nested dataclass fields recurse with a
    ``section.`` flag prefix). The parameter name is the dotted path with ``__`` (``student__epochs``).
    ``flags`` renames flags by field name; a field without a default (or named in ``required``) is required.
    ``shown``: the parameter names ``--help`` lists (the others work as usual and are listed by ``--help-all``;
    None: all)."""
    import typer

    flags, exclude, required = dict(flags or {}), set(exclude), set(required)
    hints, docs = _hints(cls), field_docs(cls)
    out: list[inspect.Parameter] = []
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        tp = hints[f.name]
        inner, _ = _origin(tp)
        pname = (prefix.replace(".", "__") + f.name)
        if dataclasses.is_dataclass(inner):
            out += typer_params(inner, prefix=prefix + f.name + ".", shown=shown)
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = ...
        if f.name in required:
            default = ...
        flag = flags.get(f.name, flag_for(f.name, prefix))
        ttype = _typer_type(tp)
        if inner is bool:
            flag = f"{flag}/--{prefix}no-{flag[2 + len(prefix):]}"
        if isinstance(default, (list, tuple)):
            default = list(default) or None
        hidden = shown is not None and pname not in set(shown) and default is not ...
        opt = typer.Option(default, flag, help=_first_sentence(docs.get(f.name, "")), hidden=hidden)
        opt.full_help = docs.get(f.name, "")  # what --help-all prints
        out.append(inspect.Parameter(pname, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=ttype))
    return out


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
                 context: bool = False, shown: Iterable[str] | None = None) -> Callable[..., Any]:
    """A typer command function whose options are generated from ``cls``'s fields (see
    :func:`typer_params`) plus ``extra`` parameters; it calls ``body(values, extras)`` with the field
    values (``{field: value}``) and the extra values (``{name: value}``, ``ctx`` included with ``context``).
    ``shown``: the generated options ``--help`` lists (one screen); ``--help-all`` then lists every one."""
    import typer

    params = typer_params(cls, flags=flags, exclude=exclude, shown=shown)
    # every generated command lists its options in full with --help-all
    extra = list(extra) + [inspect.Parameter(
        "help_all", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
        default=typer.Option(False, "--help-all", is_eager=True, expose_value=False, callback=_help_all(params),
                             help="List every option (each config key) with its default, and exit."))]
    names = {p.name for p in params}
    lead = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)] if context else []
    positional = [p for p in extra if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    keyword = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in extra if p not in positional]

    def command(*args, **kwargs):
        bound = dict(zip([p.name for p in lead + positional], args))
        bound.update(kwargs)
        values = {k: v for k, v in bound.items() if k in names}
        extras = {k: v for k, v in bound.items() if k not in names}
        return body(values, extras)

    command.__signature__ = inspect.Signature(lead + positional + params + keyword)
    command.__doc__ = doc or cls.__doc__
    command.__name__ = getattr(body, "__name__", "command")
    command.config_class = cls  # for tests: which dataclass the flags come from
    command.config_flags = {p.name: p.default for p in params}
    return command


# ================================================================================== the run config tree
# (built from the stages' own config classes, so the run and `influcoder stock/train/embed/index` share
# every field, docstring and default)
from dataclasses import dataclass, field  # noqa: E402

from .attribute import AttributeConfig, FilterConfig  # noqa: E402
from .distill import DistillConfig  # noqa: E402
from .embed import EmbedConfig  # noqa: E402
from .index import IndexConfig  # noqa: E402
from .records import DataSpec  # noqa: E402
from .stock import StockConfig  # noqa: E402

_FIELD_OPTIONS = ("preset", "prompt_field", "response_field", "messages_field", "id_field", "limit", "skip_invalid")
SCORERS = ("student", "exact-query")
"""What a run's embed/index/attribute/filter steps score with (RunConfig.scorer)."""
STEPS = ("mix", "sample", "stock", "labels", "train", "exact_query", "embed", "index", "attribute", "filter", "report")
"""The steps of a run, in order."""


def _checked_by(stage_cls: type, **placeholders):
    """Validation of a section: build the stage's config from it (placeholder paths), so its checks apply."""
    def check(section) -> None:
        stage_cls(**placeholders, **{f.name: getattr(section, f.name) for f in dataclasses.fields(section)
                                      if f.name in {g.name for g in dataclasses.fields(stage_cls)}})
    return check


TeacherConfig = section_of(
    StockConfig, "TeacherConfig", exclude=("data", "out", "overwrite", *_FIELD_OPTIONS),
    defaults={"model": "smollm2-135m-instruct"}, validate=_checked_by(StockConfig, data="-", out="-"),
    doc="The teacher: how the decoder's LoRA gradients are stocked (influcoder.stock.StockConfig's fields).")
StudentConfig = section_of(
    DistillConfig, "StudentConfig",
    exclude=("pool_data", "query_data", "labels", "out", "limit_pool", "limit_queries",
             *[f"{s}_{k}" for s in ("pool", "query") for k in ("preset", "prompt_field", "response_field", "id_field")]),
    validate=_checked_by(DistillConfig, pool_data="-", query_data="-", labels="-", out="-"),
    doc="The student: how the encoder is distilled (influcoder.distill.DistillConfig's fields).")
EmbedSection = section_of(
    EmbedConfig, "EmbedSection", exclude=("encoder", "data", "out", "side", "overwrite", *_FIELD_OPTIONS),
    validate=_checked_by(EmbedConfig, encoder="-", data="-", out="-"),
    doc="Embedding the whole pool with the trained encoder (influcoder.embed.EmbedConfig's fields).")
IndexSection = section_of(
    IndexConfig, "IndexSection", exclude=("embeddings", "out", "overwrite"),
    validate=_checked_by(IndexConfig, embeddings="-", out="-"),
    doc="The FAISS index over the pool embeddings (influcoder.index.IndexConfig's fields).")
AttributeSection = section_of(
    AttributeConfig, "AttributeSection", include=("top_k", "with_text", "nprobe", "ef_search", "batch_size", "device",
                                                  "precision"),
    extra=[("enabled", bool, True, "Run the attribute step: the top-k pool examples of every query, from the index.")],
    validate=_checked_by(AttributeConfig, encoder="-", index="-"),
    doc="Attribution of the queries against the index (influcoder.attribute.AttributeConfig's fields).")
FilterSection = section_of(
    FilterConfig, "FilterSection", include=("aggregate", "fraction", "threshold", "keep", "batch_size", "device",
                                            "precision"),
    extra=[("enabled", bool, False, "Run the filter step: score the pool by influence on the queries and write a filtered copy.")],
    validate=_checked_by(FilterConfig, encoder="-", out="-", data="-"),
    doc="Filtering the pool by aggregated influence (influcoder.attribute.FilterConfig's fields).")


def _count_ok(v: float, what: str) -> None:
    if not (0 < v < 1 or (v >= 1 and float(v).is_integer())):
        raise UserError(f"{what} must be a fraction in (0, 1) or a whole count ≥ 1, got {v}")


@dataclass
class MixConfig:
    """Optional: make the pool and/or the queries by mixing source files (``influcoder mix``) into the run."""

    pool: list[str] = field(default_factory=list)
    """PRESET=PATH sources (glob allowed; ${INFLUCODER_DATA} expands) mixed into OUT/data/pool.jsonl; empty: use pool.path."""
    pool_n: int = 0
    """Rows of the mixed pool."""
    queries: list[str] = field(default_factory=list)
    """PRESET=PATH sources mixed into OUT/data/queries.jsonl; empty: use queries.path."""
    queries_n: int = 0
    """Rows of the mixed queries."""
    seed: int = 0
    """Seed of the mix."""

    def __post_init__(self):
        for side in ("pool", "queries"):
            if getattr(self, side) and getattr(self, f"{side}_n") < 1:
                raise UserError(f"{side}_n must be ≥ 1 when {side} sources are given")


@dataclass
class SampleConfig:
    """Which pool examples and queries are stocked, and which are held out for the fidelity report."""

    n_stock: int = 200
    """Pool examples whose gradients are stocked to train the encoder (the teacher labels them × the training queries)."""
    method: str = "diverse"
    """diverse: k-means (FAISS) on untrained-encoder embeddings, the example nearest each centre; random: a seeded uniform sample."""
    holdout_pool: int = 40
    """Pool examples stocked but never trained on (a uniform sample): the rows of the report's held-out block."""
    holdout_queries: float = 0.25
    """Queries never trained on (fraction < 1 or count): the columns of the report's held-out block."""
    candidates: int = 5000
    """diverse: at most this many pool examples (a seeded uniform sample) are embedded and clustered."""
    seed: int = 0
    """Seed of the hold-out draw and of the sample."""

    def __post_init__(self):
        if self.method not in ("diverse", "random"):
            raise UserError(f"method must be diverse or random, got '{self.method}'")
        if self.n_stock < 2 or self.holdout_pool < 2:
            raise UserError("n_stock and holdout_pool must be ≥ 2")
        if self.candidates < self.n_stock:
            raise UserError(f"candidates ({self.candidates}) must be ≥ n_stock ({self.n_stock})")
        _count_ok(self.holdout_queries, "holdout_queries")


@dataclass
class ExactQuerySection:
    """Exact-query scoring beside the student (influcoder.exact_query; off by default, not yet the default scorer):
    the stocked queries keep their exact gradients, projected on the top-k principal directions of the training
    gradients; a ridge head predicts each pool example's coordinates from an untrained encoder's embeddings (text,
    response, prompt) and 10 form features. Writes exact_query/ (model, the whole pool's coordinates, the top-k
    of every stocked query) and adds its row to the fidelity report."""

    enabled: bool = False
    """Run the exact_query step."""
    encoder: str = "minilm-l6"
    """The (untrained) encoder whose embeddings are the head's features."""
    max_length: int = 256
    """Encoder tokens per view (the response kept, the prompt cut from the left)."""
    ks: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    """Candidate numbers of principal directions (chosen on the selection part)."""
    alphas: list[float] = field(default_factory=lambda: [1.0, 10.0, 100.0, 1000.0, 10000.0])
    """Candidate ridge penalties (chosen on the selection part)."""
    selection: float = 0.25
    """Share of the training pool held out to choose the basis (training pool + queries, or queries only), k and α."""
    top_k: int = 10
    """Pool examples listed per stocked query in exact_query/attribution.jsonl."""
    student: bool = False
    """Under scorer exact-query: also distil the student (the train step) and put its row in the report beside
    this scorer's (without it, a run that scores with exact-query trains no encoder)."""
    batch_size: int = 32
    """Encoder batch size."""

    def __post_init__(self):
        if not self.ks or min(self.ks) < 1 or not self.alphas or min(self.alphas) <= 0:
            raise UserError("ks must be positive integers and alphas positive numbers")
        if not 0 < self.selection < 1:
            raise UserError(f"selection must be in (0, 1), got {self.selection}")
        if self.top_k < 1 or self.max_length < 8:
            raise UserError("top_k must be ≥ 1 and max_length ≥ 8")


@dataclass
class ReportSection:
    """The fidelity report on the held-out block (student vs teacher, next to the untrained encoder and the length heuristic)."""

    enabled: bool = True
    """Write the report (report/fidelity.md, .json, .png)."""
    top_k: int = 10
    """k of the precision of the teacher's top-k among a method's top-k (per held-out query)."""
    margin: float = 0.05
    """Per-anchor Spearman gain over the best baseline that the verdict asks of the student."""
    bootstrap: int = 2000
    """Bootstrap resamples of the held-out queries for the confidence interval of that gain."""
    min_spearman: float = 0.5
    """Per-anchor Spearman against the teacher below which the verdict is never USE, even when the student beats
    the baselines: it then reproduces too little of the teacher's ranking to filter by."""

    def __post_init__(self):
        if self.top_k < 1 or self.bootstrap < 100:
            raise UserError("top_k must be ≥ 1 and bootstrap ≥ 100")
        if not -1.0 <= self.min_spearman <= 1.0:
            raise UserError(f"min_spearman must be in [-1, 1], got {self.min_spearman}")


@dataclass
class RunConfig:
    """`influcoder run RUN.yaml`: the whole job on one pool and one set of queries, from one config."""

    out: str = "work/run"
    """Run folder: every step's artefacts, the resolved config.yaml and run_manifest.json."""
    pool: DataSpec = field(default_factory=DataSpec)
    """The training pool (any size): its whole is embedded and indexed; a sample of it is stocked."""
    queries: DataSpec = field(default_factory=DataSpec)
    """The queries (reference examples of the behaviour): all of them are stocked."""
    mix: MixConfig = field(default_factory=MixConfig)
    """Optional: build the pool / queries by mixing source files."""
    sample: SampleConfig = field(default_factory=SampleConfig)
    """The stocked sample and the held-out block."""
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    """Gradient stocking (teacher)."""
    student: StudentConfig = field(default_factory=StudentConfig)
    """Distillation (student encoder)."""
    embed: EmbedSection = field(default_factory=EmbedSection)
    """Embedding the whole pool."""
    index: IndexSection = field(default_factory=IndexSection)
    """Indexing the pool embeddings."""
    attribute: AttributeSection = field(default_factory=AttributeSection)
    """Top-k attribution of the queries."""
    filter: FilterSection = field(default_factory=FilterSection)
    """Filtering the pool by influence."""
    exact_query: ExactQuerySection = field(default_factory=ExactQuerySection)
    """Exact-query scoring beside the student (off by default)."""
    report: ReportSection = field(default_factory=ReportSection)
    """The fidelity report."""
    scorer: str = "student"
    """What embed, index, attribute and filter score with: student (the distilled bi-encoder, encoder/) or
    exact-query (the exact_query step's model, exact_query/model: pool vectors are predicted gradient coordinates,
    a query's vector its exact coordinates — new queries are stocked, nothing else). exact-query runs the
    exact_query step whether or not exact_query.enabled says so."""
    device: str = "auto"
    """Device of every step that runs a model, where the step's own section says auto: auto (CUDA when
    present, else cpu), cpu (force the CPU), cuda or cuda:N."""
    precision: str = "auto"
    """Precision of every step that runs a model, where the step's own section says auto (teacher.dtype,
    student/embed/attribute/filter.precision): auto (bfloat16 where the device computes it natively, float32
    elsewhere), float32 or bfloat16. Each step's record (steps/<step>.json) holds the resolved one."""
    steps: list[str] = field(default_factory=list)
    """Steps to run (each with the steps it needs; comma-separated or repeated): mix, sample, stock, labels, train, embed, index, attribute, filter, report. Empty: all enabled steps."""

    def __post_init__(self):
        steps = [s.strip() for item in self.steps for s in str(item).split(",") if s.strip()]
        bad = [s for s in steps if s not in STEPS]
        if bad:
            raise UserError(f"steps: unknown step '{bad[0]}' (choose from {', '.join(STEPS)})")
        self.steps = steps
        if self.scorer not in SCORERS:
            raise UserError(f"scorer must be one of {', '.join(SCORERS)}, got {self.scorer!r}")
        from .hardware import check_compute

        check_compute(self.device, self.precision)
        for sec in (self.teacher, self.student, self.embed, self.attribute, self.filter):  # the run's choice, where a
            if self.device != "auto" and sec.device == "auto":                          # section leaves it to auto
                sec.device = self.device
            pname = "dtype" if sec is self.teacher else "precision"
            if self.precision != "auto" and getattr(sec, pname) == "auto":
                setattr(sec, pname, self.precision)
        if not self.out:
            raise UserError("out: the run folder may not be empty")
        for side in ("pool", "queries"):
            if not getattr(self, side).path and not getattr(self.mix, side):
                raise UserError(f"{side}.path: give the {side} records file (or mix.{side} sources)")
