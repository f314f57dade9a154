"""The typed config tree: YAML ⇄ dataclass ⇄ CLI round trip, unknown keys, and one generated flag per
field with the field's own default for every stage command."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import yaml
from typer.testing import CliRunner

from influcoder.core.config import ConfigError, field_docs, from_dict, load_yaml, save_yaml, to_dict, typer_params
from influcoder.run.config import RunConfig, StudentConfig, TeacherConfig
from influcoder.data.records import DataSpec


def _leaves(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        inner = hints[f.name]
        args = [a for a in typing.get_args(inner) if a is not type(None)]
        inner = args[0] if len(args) == 1 else inner
        if dataclasses.is_dataclass(inner):
            yield from _leaves(inner, prefix + f.name + ".")
        else:
            yield prefix + f.name, f


def _default(f):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return ...


def _commands():
    from influcoder.app.cli import app

    return {c.name: c.callback for c in app.registered_commands}


GENERATED = {"run": ("RunConfig", set()), "train": ("DistillConfig", set()), "stock": ("StockConfig", set()),
             "embed": ("EmbedConfig", {"dtype"}), "index": ("IndexConfig", set()),
             "attribute": ("AttributeConfig", set()), "filter": ("FilterConfig", {"dtype"}), "serve": ("ServeConfig", set()),
             "mix": ("MixSpec", set()), "influence": ("InfluenceConfig", set()), "targets": ("TargetsConfig", set()),
             "evaluate": ("EvaluateCommand", set()), "exact-query": ("ExactQueryAttributeConfig", set())}
REQUIRED = {"attribute": {"out"}}
"""Flags a command requires although the field has a default (the API may leave it out, the command may not)."""


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_every_field_has_one_flag_with_the_field_default(name):
    import typer

    cmd = _commands()[name]
    cls = cmd.config_class
    assert cls.__name__ == GENERATED[name][0]
    params = {p.name: p for p in __import__("inspect").signature(cmd).parameters.values()}
    all_flags = [d for p in params.values() if isinstance(p.default, typer.models.ParameterInfo)
                 for d in (p.default.param_decls or ())]
    for path, f in _leaves(cls):
        if path in GENERATED[name][1]:
            continue
        pname = path.replace(".", "__")
        assert pname in params, f"{name}: no flag for {path}"
        opt = params[pname].default
        d = _default(f)
        if opt.default is ... and (path in REQUIRED.get(name, ()) or path.endswith(".path")):
            pass  # a required flag: the command's own, or the path of a data section the config requires
        else:
            assert opt.default == (list(d) or None if isinstance(d, list) else d), f"{name}: {path}"
        flag = "--" + path.rsplit(".", 1)[0] + "." + f.name.replace("_", "-") if "." in path else "--" + f.name.replace("_", "-")
        decls = [x for d_ in opt.param_decls for x in d_.split("/")]
        assert decls[0] == flag and sum(x == flag for x in all_flags for x in x.split("/")) == 1, f"{name}: {path}"
        assert opt.help, f"{name}: {path} has no help (field docstring)"


def test_field_docstrings_come_from_the_class_body():
    assert field_docs(StudentConfig)["epochs"].startswith("Passes over the training pool")
    assert field_docs(DataSpec)["limit"] == "Use only the first N valid records."
    assert TeacherConfig().model == "smollm2-135m-instruct"  # the run's default for a field the stage requires


def _cfg(tmp_path, **over):
    d = {"out": str(tmp_path / "run"), "pool": {"path": "pool.jsonl", "preset": "alpaca", "limit": 100},
         "queries": {"path": "q.jsonl", "prompt_field": "input", "response_field": "target"},
         "student": {"epochs": 3, "lr": 1e-4, "precision": "bfloat16"}, "teacher": {"proj_dim": 1024, "dtype": "bfloat16"},
         "sample": {"n_stock": 50, "method": "random"}, "mix": {"pool": []}, "steps": ["train"]}
    d.update(over)
    return d


def test_yaml_dataclass_cli_round_trip(tmp_path):
    from influcoder.app import cli_run

    cfg = from_dict(RunConfig, _cfg(tmp_path))
    path = save_yaml(cfg, tmp_path / "run.yaml")
    back = load_yaml(RunConfig, path)
    assert back == cfg and to_dict(back) == to_dict(cfg)
    assert yaml.safe_load(path.read_text())["student"]["epochs"] == 3

    # CLI flags over the YAML file: only the flags given change the config
    seen = {}
    real = cli_run._run

    def capture(values, extras):
        seen["cfg"] = cli_run._apply_overrides(load_yaml(RunConfig, extras["config"]), values, extras["ctx"])
    cli_run._run = capture
    try:
        from influcoder.app.cli import app

        r = CliRunner().invoke(app, ["run", str(path), "--student.epochs", "7", "--pool.limit", "5",
                                     "--student.precision", "float32", "--steps", "embed,index", "--sample.method", "diverse"])
    finally:
        cli_run._run = real
    assert r.exit_code == 0, r.output
    got = seen["cfg"]
    want = from_dict(RunConfig, _cfg(tmp_path, steps=["embed", "index"],
                                     student={"epochs": 7, "lr": 1e-4, "precision": "float32"},
                                     pool={"path": "pool.jsonl", "preset": "alpaca", "limit": 5},
                                     sample={"n_stock": 50, "method": "diverse"}))
    assert got == want and got.steps == ["embed", "index"]
    # with no flags, the CLI gives back the YAML's config exactly
    cli_run._run = capture
    try:
        r = CliRunner().invoke(app, ["run", str(path)])
    finally:
        cli_run._run = real
    assert r.exit_code == 0 and seen["cfg"] == cfg


def test_unknown_key_names_the_key_and_the_file(tmp_path):
    p = tmp_path / "bad.yaml"
    d = _cfg(tmp_path)
    d["student"]["epoch"] = 2
    p.write_text(yaml.safe_dump(d))
    with pytest.raises(ConfigError, match=r"bad\.yaml: student: unknown key 'epoch'"):
        load_yaml(RunConfig, p)
    d = _cfg(tmp_path, colour="red")
    p.write_text(yaml.safe_dump(d))
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown key 'colour'"):
        load_yaml(RunConfig, p)


@pytest.mark.parametrize("bad, match", [
    ({"student": {"alpha": 2}}, r"student: DistillConfig: alpha must be in \[0, 1\]"),
    ({"teacher": {"dtype": "int8"}}, "teacher: dtype must be one of auto, float32, bfloat16"),
    ({"student": {"precision": "fp8"}}, "student: DistillConfig: precision must be one of auto, float32, bfloat16"),
    ({"student": {"device": "tpu"}}, "student: DistillConfig: device must be auto, cpu, cuda or cuda:N"),
    ({"sample": {"n_stock": "many"}}, r"sample\.n_stock: expected a whole number"),
    ({"pool": {"path": "x", "preset": "nope"}}, "pool: unknown preset 'nope'"),
    ({"steps": ["trian"]}, "unknown step 'trian'"),
    ({"queries": {}}, "queries.path: give the queries records file"),
])
def test_invalid_values_are_named(tmp_path, bad, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(RunConfig, _cfg(tmp_path, **bad))


def test_cli_run_bad_config_is_one_line_exit_2(tmp_path):
    import subprocess
    import sys

    p = tmp_path / "bad.yaml"
    p.write_text("out: x\npool: {path: a}\nqueries: {path: b}\nstudnet: {epochs: 1}\n")
    r = subprocess.run([sys.executable, "-m", "influcoder", "run", str(p)], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown key 'studnet'" in r.stderr and "Traceback" not in r.stderr


def test_shipped_configs_load():
    """The demo config ships inside the package (found by name) and the own-data template loads as it is."""
    from pathlib import Path

    from influcoder.core.config import ConfigError
    from influcoder.run.config import find_run_config

    cfg = load_yaml(RunConfig, find_run_config("demo"))
    assert cfg.teacher.model == "smollm2-135m-instruct" and cfg.student.encoder == "minilm-l6"
    assert cfg.mix.pool and cfg.mix.queries and cfg.report.enabled
    own = load_yaml(RunConfig, Path(__file__).parent.parent / "configs" / "own_data.yaml")
    assert own.pool.path == "my_pool.jsonl" and own.queries.path == "my_queries.jsonl" and not own.mix.pool
    with pytest.raises(ConfigError, match="shipped config: demo"):
        find_run_config("no_such_config")


def test_typer_params_of_a_section_are_dotted():
    names = [p.default.param_decls[0] for p in typer_params(RunConfig)]
    assert "--student.epochs" in names and "--pool.prompt-field" in names and "--out" in names


def test_differences_name_each_setting_with_both_values():
    from influcoder.core.config import differences

    old = {"student": {"epochs": 3, "lr": 1e-4}, "out": "a", "steps": ["x"]}
    new = {"student": {"epochs": 7, "lr": 1e-4}, "out": "a", "steps": ["x", "y"], "seed": 1}
    assert differences(old, new) == ['seed: null (saved) vs 1 (now)', 'steps: ["x"] (saved) vs ["x", "y"] (now)',
                                     'student.epochs: 3 (saved) vs 7 (now)']
    assert differences(old, old) == []


def test_every_command_is_generated_from_a_config_dataclass():
    """No hand-written command: each one's options come from its config class (command_from)."""
    from influcoder.app.cli import app

    for c in app.registered_commands:
        cls = getattr(c.callback, "config_class", None)
        assert cls is not None and dataclasses.is_dataclass(cls), c.name
        assert c.callback.config_flags, c.name
