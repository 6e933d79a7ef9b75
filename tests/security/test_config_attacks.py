"""Hostile configs: every route to code execution found so far must fail with one clear error, run nothing and
write nothing. Each test is an attack as a hostile config author would write it (docs/security.md)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from automodel.components.config import (
    ConfigError,
    ConfigValidationError,
    Section,
    TargetPolicy,
    instantiate,
    load_config,
    load_yaml_text,
    validate_config,
)


@pytest.fixture(autouse=True)
def no_opt_ins(monkeypatch):
    for name in ("AUTOMODEL_ALLOWED_TARGETS", "AUTOMODEL_ALLOW_FILE_TARGETS", "AUTOMODEL_TRUST_REMOTE_CODE"):
        monkeypatch.delenv(name, raising=False)


def _validate(text: str, schema: dict | None = None, policy: TargetPolicy | None = None) -> None:
    cfg = load_yaml_text(textwrap.dedent(text), policy=policy)
    validate_config(cfg, schema or {key: Section() for key in cfg})


def _cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _CLI, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


_CLI = "import sys; from automodel.cli.app import main; sys.argv[0] = 'automodel'; main(sys.argv[1:])"


# --- 1. the chained attack of the issue: write a .py with one allowed target, import it with another ------------
def chained_attack(tmp_path: Path) -> str:
    payload = tmp_path / "payload.py"
    marker = tmp_path / "pwned"
    return f"""
    dataset:
      _target_: datasets.Dataset.to_csv
      self:
        _target_: datasets.Dataset.from_dict
        mapping: {{"x": ["open({str(marker)!r}, 'w').write('owned')"]}}
      path_or_buf: {payload}
      index: false
      header: false
    model:
      _target_: transformers.utils.import_utils.direct_transformers_import
      path: {tmp_path}
    """


def test_chained_write_then_import_attack_is_refused_by_validate_and_build(tmp_path):
    text = chained_attack(tmp_path)
    with pytest.raises(ConfigValidationError) as info:
        _validate(text)
    message = str(info.value)
    assert "dataset._target_: 'datasets.Dataset.to_csv' is not in the allowlist" in message
    assert "model._target_: 'transformers.utils.import_utils.direct_transformers_import' is refused" in message
    cfg = load_yaml_text(textwrap.dedent(text))
    for section in ("dataset", "model"):
        with pytest.raises(ConfigError):
            instantiate(cfg[section])
    assert not (tmp_path / "payload.py").exists() and not (tmp_path / "pwned").exists()


def test_the_chained_attack_through_the_cli_is_one_error_line(tmp_path):
    config = tmp_path / "attack.yaml"
    config.write_text(textwrap.dedent(chained_attack(tmp_path)) + "step_scheduler: {global_batch_size: 1}\n")
    result = _cli("llm", "validate", "-c", str(config), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert "not in the allowlist" in result.stderr and "OK" not in result.stdout
    assert not (tmp_path / "payload.py").exists() and not (tmp_path / "pwned").exists()


# --- 2. other listed-looking entry points that load pickles or import files -----------------------------------------
@pytest.mark.parametrize(
    "target, args",
    [
        ("peft.utils.save_and_load.torch_load", "f: evil.bin\n  weights_only: false"),
        ("transformers.modeling_utils.load_state_dict", "checkpoint_file: evil.bin\n  weights_only: false"),
        ("torch.distributed.checkpoint.format_utils.dcp_to_torch_save", "dcp_checkpoint_dir: x\n  torch_save_path: y"),
        ("torch.load", "f: evil.bin"),
        ("torch.hub.load", "repo_or_dir: evil/repo\n  model: x"),
        (
            "transformers.dynamic_module_utils.get_class_from_dynamic_module",
            "class_reference: a.B\n  pretrained_model_name_or_path: x",
        ),
        ("importlib.import_module", "name: evil"),
        ("builtins.exec", "source: print(1)"),
        ("functools.partial", "func: os.system"),
        ("os.system", "command: touch pwned"),
        ("subprocess.run", "args: [touch, pwned]"),
        ("torch.utils.cpp_extension.load_inline", "name: x\n  cpp_sources: ''"),
        ("datasets.load_from_disk", "dataset_path: x"),
        ("transformers.Trainer", "model: null"),
    ],
)
def test_code_and_pickle_entry_points_are_refused(target, args, tmp_path):
    text = f"model:\n  _target_: {target}\n  {args}\n"
    with pytest.raises(ConfigValidationError, match=r"model\._target_: .*(not in the allowlist|refused)"):
        _validate(text)
    with pytest.raises(ConfigError, match="not in the allowlist|refused"):
        instantiate(load_yaml_text(text).model)


@pytest.mark.parametrize(
    "where",
    [
        "dataloader:\n  collate_fn: subprocess.getoutput\n",  # a `*_fn` key resolves to a callable
        "dataloader:\n  worker_init_fn: os.system\n",
        "optimizer:\n  _target_: torch.optim.AdamW\n  lr: 1.0e-3\n  extra:\n    inner:\n      _target_: os.system\n      command: x\n",
        "model:\n  items:\n    - {_target_: builtins.eval, source: '1'}\n",
    ],
)
def test_nested_sections_lists_and_fn_keys_are_checked_too(where):
    with pytest.raises(ConfigValidationError, match="not in the allowlist|refused"):
        _validate(where)


def test_cli_overrides_cannot_name_a_target_outside_the_allowlist(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        "model:\n  _target_: automodel.NeMoAutoModelForCausalLM.from_pretrained\n  pretrained_model_name_or_path: x\n"
    )
    cfg = load_config(config, ["--model._target_", "os.system", "--model.command", "touch pwned"])
    with pytest.raises(ConfigValidationError, match="os.system' is not in the allowlist"):
        validate_config(cfg, {"model": Section()})
    with pytest.raises(ConfigError, match="not in the allowlist"):
        instantiate(cfg.model)


# --- 3. keyword arguments that make a listed loader run code ------------------------------------------------------
@pytest.mark.parametrize(
    "text, path",
    [
        (
            "model:\n  _target_: automodel.NeMoAutoModelForCausalLM.from_pretrained\n  pretrained_model_name_or_path: x\n  trust_remote_code: true\n",
            "model.trust_remote_code",
        ),
        (
            "tokenizer:\n  _target_: transformers.AutoTokenizer.from_pretrained\n  pretrained_model_name_or_path: x\n  trust_remote_code: yes\n",
            "tokenizer.trust_remote_code",
        ),
        (
            "model:\n  _target_: automodel.NeMoAutoModelForCausalLM.from_config\n  config:\n    _target_: transformers.AutoConfig.from_pretrained\n    pretrained_model_name_or_path: x\n    trust_remote_code: true\n",
            "model.config.trust_remote_code",
        ),
        (
            "model:\n  _target_: transformers.AutoModelForCausalLM.from_pretrained\n  pretrained_model_name_or_path: x\n  model_kwargs: {trust_remote_code: 1}\n",
            "model.model_kwargs.trust_remote_code",
        ),
    ],
)
def test_trust_remote_code_needs_the_users_flag(text, path, monkeypatch):
    with pytest.raises(ConfigValidationError, match=rf"{path}: .* pass --trust-remote-code"):
        _validate(text)
    cfg = load_yaml_text(text)
    section = next(iter(cfg))
    with pytest.raises(ConfigError, match="--trust-remote-code"):
        instantiate(cfg[section])
    _validate(text, policy=TargetPolicy(trust_remote_code=True))  # the user's opt-in lifts it
    monkeypatch.setenv("AUTOMODEL_TRUST_REMOTE_CODE", "1")
    _validate(text)


@pytest.mark.parametrize(
    "line",
    ["use_kernels: true", "attn_implementation: kernels-community/flash-attn2", "kernel_config: {x: 1}"],
)
def test_hub_kernels_need_the_users_flag(line):
    # transformers loads compiled code from a Hub repository for these (with the `kernels` package installed)
    text = f"model:\n  _target_: automodel.NeMoAutoModelForCausalLM.from_pretrained\n  pretrained_model_name_or_path: x\n  {line}\n"
    with pytest.raises(ConfigValidationError, match=r"model\.\w+: .*Hub.*--trust-remote-code"):
        _validate(text)
    _validate(text, policy=TargetPolicy(trust_remote_code=True))
    _validate(text.replace(line, "attn_implementation: sdpa"))  # the usual values are fine


def test_weights_only_false_is_refused_everywhere():
    text = "model:\n  _target_: transformers.AutoModelForCausalLM.from_pretrained\n  pretrained_model_name_or_path: x\n  weights_only: false\n"
    with pytest.raises(ConfigValidationError, match=r"model\.weights_only: False is refused: false unpickles"):
        _validate(text)
    with pytest.raises(ConfigValidationError, match="weights_only"):
        _validate(text, policy=TargetPolicy(trust_remote_code=True))
    _validate(text.replace("false", "true"))


def test_python_yaml_tags_are_not_constructed(tmp_path):
    marker = tmp_path / "pwned"
    for tag in ("!!python/object/apply:os.system", "!!python/name:os.system", "!!python/object/new:os.system"):
        with pytest.raises(ConfigError, match="invalid YAML"):
            load_yaml_text(f"model:\n  x: {tag} ['touch {marker}']\n")
    assert not marker.exists()


# --- 4. validate runs nothing ---------------------------------------------------------------------------------------
def _marker_module(directory: Path, name: str, marker: Path) -> Path:
    path = directory / f"{name}.py"
    path.write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n\n"
        "def build(size, scale=1.0, *, name='x'):\n    return size\n\n"
        "class Thing:\n    def __init__(self, depth, width=2):\n        pass\n"
    )
    return path


def test_validate_never_imports_a_file_target(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    path = _marker_module(tmp_path, "user_code", marker)
    monkeypatch.setenv("AUTOMODEL_ALLOW_FILE_TARGETS", "1")
    # keys are still checked, from the source
    with pytest.raises(ConfigValidationError, match=r"model\.sise: unknown key \(did you mean 'size'\?\)"):
        _validate(f"model:\n  _target_: {path}:build\n  sise: 3\n")
    with pytest.raises(ConfigValidationError, match=r"model\.depth: missing required argument"):
        _validate(f"model:\n  _target_: {path}:Thing\n  width: 3\n")
    _validate(f"model:\n  _target_: {path}:build\n  size: 3\n  name: y\n")
    assert not marker.exists()
    assert instantiate(load_yaml_text(f"model:\n  _target_: {path}:build\n  size: 3\n").model) == 3  # build runs it
    assert marker.exists()


def test_validate_never_imports_an_opted_in_module(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    package = tmp_path / "userpkg_security_test"
    package.mkdir()
    (package / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    _marker_module(package, "models", marker)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("AUTOMODEL_ALLOWED_TARGETS", "userpkg_security_test")
    with pytest.raises(ConfigValidationError, match=r"model\.sise: unknown key"):
        _validate("model:\n  _target_: userpkg_security_test.models.build\n  sise: 3\n")
    _validate("model:\n  _target_: userpkg_security_test.models.Thing\n  depth: 3\n")
    assert not marker.exists() and "userpkg_security_test" not in sys.modules


# --- 5. YAML that expands without bound --------------------------------------------------------------------------
def _alias_bomb(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels + 1):
        refs = ", ".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    lines.append(f"model: {{x: *a{levels}}}")
    return "\n".join(lines) + "\n"


@pytest.mark.timeout(60)
def test_an_alias_bomb_is_refused_at_once(tmp_path):
    text = _alias_bomb()
    assert len(text) < 600  # a few hundred bytes that would expand to 9**10 values
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"expands to more than 100,000 values"):
        load_yaml_text(text)
    assert time.perf_counter() - start < 5
    config = tmp_path / "bomb.yaml"
    config.write_text(text)
    result = _cli("llm", "validate", "-c", str(config), cwd=tmp_path)
    assert result.returncode == 2 and "expands to more than" in result.stderr and "Traceback" not in result.stderr


def test_ordinary_anchors_still_work_and_self_reference_is_refused():
    cfg = load_yaml_text("base: &b {lr: 1.0e-3, betas: [0.9, 0.95]}\noptimizer:\n  <<: *b\n  eps: 1.0e-8\n")
    assert cfg.optimizer.lr == 1e-3 and cfg.optimizer.eps == 1e-8
    with pytest.raises(ConfigError, match="refers to the mapping or list that contains it"):
        load_yaml_text("a: &a [1, *a]\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_yaml_text("a: " + "[" * 3000 + "]" * 3000 + "\n")
    with pytest.raises(ConfigError, match="more than a config can be"):
        load_yaml_text("a: '" + "x" * (9 * 2**20) + "'\n")


# --- 6. secrets never printed -----------------------------------------------------------------------------------
SECRET = "hf_SECRETvalue0123456789"


def test_a_secret_from_the_environment_is_never_in_an_error_or_a_log(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HF_TOKEN_TEST_SECRET", SECRET)
    config = tmp_path / "c.yaml"
    config.write_text(
        textwrap.dedent(
            """
            step_scheduler:
              global_batch_size: 1
              local_batch_size: ${HF_TOKEN_TEST_SECRET}
            model:
              _target_: automodel.NeMoAutoModelForCausalLM.from_pretrained
              pretrained_model_name_or_path: ${HF_TOKEN_TEST_SECRET}
            dataset:
              _target_: automodel.components.datasets.llm.squad.make_squad_dataset
              path_or_dataset: x
              seq_length: "${HF_TOKEN_TEST_SECRET}"
            checkpoint:
              checkpoint_dir: "${HF_TOKEN_TEST_SECRET}"
              keep_last_n: "${HF_TOKEN_TEST_SECRET}"
            """
        )
    )
    result = _cli("llm", "validate", "-c", str(config), cwd=tmp_path, env={"HF_TOKEN_TEST_SECRET": SECRET})
    assert result.returncode == 2, result.stderr
    assert "${HF_TOKEN_TEST_SECRET}" in result.stderr
    assert SECRET not in result.stderr and SECRET not in result.stdout
    # a log line of any logger shows the placeholder too
    import logging

    load_config(config)  # registers the substituted value
    logging.getLogger("some.library").warning("loading from %s", SECRET)
    assert SECRET not in caplog.text and "${HF_TOKEN_TEST_SECRET}" in caplog.text


# --- 7. the opt-ins are the user's, and they reach torchrun ranks --------------------------------------------------
def test_allow_target_is_exported_to_child_processes_and_restored(tmp_path, monkeypatch):
    from automodel.cli import app

    seen = {}

    def fake_finetune(args, extra, domain, command):
        seen["env"] = os.environ.get("AUTOMODEL_ALLOWED_TARGETS")
        seen["trust"] = os.environ.get("AUTOMODEL_TRUST_REMOTE_CODE")
        return 0

    monkeypatch.setattr(app, "_finetune", fake_finetune)
    config = tmp_path / "c.yaml"
    config.write_text("model: {}\n")
    assert app.run(["llm", "finetune", "-c", str(config), "--allow-target", "mypkg", "--trust-remote-code"]) == 0
    assert seen == {"env": "mypkg", "trust": "1"}
    assert "AUTOMODEL_ALLOWED_TARGETS" not in os.environ and "AUTOMODEL_TRUST_REMOTE_CODE" not in os.environ


def test_which_environment_values_count_as_secrets():
    from automodel._shared.redact import looks_secret

    assert looks_secret("HF_TOKEN", "abc123")
    assert looks_secret("WANDB_API_KEY", "x" * 40)
    assert looks_secret("MY_DB_PASSWORD", "hunter22")
    assert looks_secret("SOME_VAR", "hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789")  # shaped like a token
    assert not looks_secret("DATA_DIR", "/data/gsm8k/train.jsonl")  # paths and numbers stay readable in logs
    assert not looks_secret("NPROC", "8")
