"""CLI overrides in all three forms, and the `-c CONFIG` command line of a recipe file."""

import pytest

from automodel.components.config import (
    ConfigError,
    apply_overrides,
    load_config,
    load_yaml_text,
    parse_cli_args,
    parse_overrides,
)


def test_three_forms_and_literal_values():
    pairs = parse_overrides(
        ["--optimizer.lr", "1e-4", "--step_scheduler.max_steps=20", "model.name=gpt2", "--x", '"123"', "--y", "-1"]
    )
    assert pairs == [
        ("optimizer.lr", 1e-4),
        ("step_scheduler.max_steps", 20),
        ("model.name", "gpt2"),
        ("x", "123"),
        ("y", -1),
    ]


def test_value_types():
    pairs = dict(
        parse_overrides(
            ["--a", "[0.9, 0.95]", "--b", "none", "--c", "False", "--d", "checkpoints/", "--e=", "--f", "{'k': 1}"]
        )
    )
    assert pairs == {"a": [0.9, 0.95], "b": None, "c": False, "d": "checkpoints/", "e": "", "f": {"k": 1}}


def test_flag_without_value_is_an_error():
    with pytest.raises(ConfigError, match=r"override '--a\.b' has no value"):
        parse_overrides(["--a.b", "--c", "1"])
    with pytest.raises(ConfigError, match=r"override '--c' has no value"):
        parse_overrides(["--a", "1", "--c"])
    with pytest.raises(ConfigError, match=r"unexpected argument 'stray'"):
        parse_overrides(["stray"])
    with pytest.raises(ConfigError, match=r"invalid key 'a\.\.b'"):
        parse_overrides(["--a..b=1"])


def test_apply_creates_keys_and_keeps_dashes():
    cfg = load_yaml_text("optimizer:\n  lr: 1.0\npeft: null\n")
    apply_overrides(
        cfg,
        parse_overrides(["--optimizer.lr", "3e-4", "--new.section.key=5", "--peft.dim", "8", "--my-key", "x"]),
    )
    assert cfg.optimizer.lr == 3e-4
    assert cfg.new.section.key == 5 and cfg.new.section.path == "new.section"
    assert cfg.peft.dim == 8
    assert cfg["my-key"] == "x"


def test_override_through_a_scalar_is_an_error():
    cfg = load_yaml_text("optimizer:\n  lr: 1.0\n")
    with pytest.raises(ConfigError, match=r"cannot set 'optimizer\.lr\.x': 'optimizer\.lr' holds 1\.0, not a mapping"):
        apply_overrides(cfg, [("optimizer.lr.x", 1)])


def test_override_with_env_placeholder(monkeypatch):
    monkeypatch.setenv("MY_LR", "2e-5")
    monkeypatch.setenv("MY_TOKEN", "secret-token-999")
    cfg = load_yaml_text("optimizer:\n  lr: 1.0\n")
    apply_overrides(cfg, parse_overrides(["--optimizer.lr", "${MY_LR}", "--hf.token=${MY_TOKEN}"]))
    assert cfg.optimizer.lr == 2e-5
    assert cfg.hf.token == "secret-token-999"
    assert "secret-token-999" not in cfg.to_yaml() and "${MY_TOKEN}" in cfg.to_yaml()
    monkeypatch.delenv("MY_MISSING", raising=False)
    with pytest.raises(ConfigError, match=r"optimizer\.lr: environment variable 'MY_MISSING' is not set"):
        apply_overrides(cfg, [("optimizer.lr", "${MY_MISSING}")])


def test_load_config_with_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("step_scheduler:\n  max_steps: 10\n")
    cfg = load_config(path, ["--step_scheduler.max_steps", "3", "seed=7"])
    assert cfg.step_scheduler.max_steps == 3 and cfg.seed == 7


def test_parse_cli_args():
    assert parse_cli_args(["-c", "x.yaml", "--a.b", "1"]) == ("x.yaml", [("a.b", 1)])
    assert parse_cli_args(["--a.b=1", "--config", "y.yaml"]) == ("y.yaml", [("a.b", 1)])
    assert parse_cli_args(["--config=z.yaml"]) == ("z.yaml", [])
    with pytest.raises(ConfigError, match="missing the config: pass -c/--config"):
        parse_cli_args(["--a.b", "1"])
    with pytest.raises(ConfigError, match="'-c' needs the path"):
        parse_cli_args(["-c"])
    with pytest.raises(ConfigError, match="given twice"):
        parse_cli_args(["-c", "a.yaml", "-c", "b.yaml"])
