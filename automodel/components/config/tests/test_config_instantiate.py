"""instantiate(): nested targets, `*_fn` keys, runtime kwargs, default targets and binding errors."""

import sys
import textwrap
import types

import pytest

from automodel.components.config import (
    ConfigError,
    ConfigNode,
    TargetPolicy,
    instantiate,
    load_yaml_text,
    resolve_target,
)

FAKE = "automodel.fake_config_instantiate"


@pytest.fixture(autouse=True)
def fake_module(monkeypatch):
    module = types.ModuleType(FAKE)
    monkeypatch.setitem(sys.modules, FAKE, module)
    exec(
        textwrap.dedent(
            """
            class Inner:
                def __init__(self, x, y=0):
                    self.x, self.y = x, y

            class Outer:
                def __init__(self, inner, items=(), options=None, act_fn=None, scale=1.0, tokenizer=None):
                    self.inner, self.items, self.options = inner, items, options
                    self.act_fn, self.scale, self.tokenizer = act_fn, scale, tokenizer

            def explode(reason):
                raise RuntimeError(reason)

            def make(*args, **kwargs):
                return args, kwargs
            """
        ),
        module.__dict__,
    )
    monkeypatch.setenv("AUTOMODEL_ALLOWED_TARGETS", FAKE)  # a module of the test, opted in as a user would
    return module


def test_nested_targets_fn_keys_and_plain_mappings():
    cfg = load_yaml_text(
        f"""
        section:
          _target_: {FAKE}.Outer
          inner:
            _target_: nemo_{FAKE}.Inner
            x: 1
          items:
            - _target_: {FAKE}.Inner
              x: 2
            - 3
          options:
            depth: 2
            nested:
              _target_: {FAKE}.Inner
              x: 4
          act_fn: automodel.components.datasets.utils.default_collater
          scale: 2e-1
        """.replace("\n        ", "\n")
    )
    obj = instantiate(cfg.section)
    mod = sys.modules[FAKE]
    assert isinstance(obj, mod.Outer) and isinstance(obj.inner, mod.Inner) and obj.inner.x == 1
    assert obj.items[0].x == 2 and obj.items[1] == 3
    assert type(obj.options) is dict and obj.options["depth"] == 2 and obj.options["nested"].x == 4
    assert obj.act_fn is resolve_target("automodel.components.datasets.utils.default_collater")
    assert obj.scale == 0.2


def test_runtime_kwargs_and_positional_args_win():
    node = ConfigNode({"_target_": f"{FAKE}.make", "a": 1, "b": 2})
    args, kwargs = instantiate(node, "pos", b=20, tokenizer="tok")
    assert args == ("pos",) and kwargs == {"a": 1, "b": 20, "tokenizer": "tok"}


def test_default_target_and_missing_section():
    mod = sys.modules[FAKE]
    built = instantiate({"x": 5}, default_target=mod.Inner)
    assert built.x == 5
    assert instantiate({"_target_": f"{FAKE}.Inner", "x": 1}, default_target=dict).x == 1
    assert instantiate(None, default_target=mod.Inner, x=9).x == 9
    with pytest.raises(ConfigError, match="section is missing and has no default"):
        instantiate(None)
    with pytest.raises(ConfigError, match=r"optimizer: no '_target_' to build it with"):
        instantiate(ConfigNode({"lr": 1.0}, path="optimizer"))


def test_binding_errors_name_section_target_and_parameters():
    cfg = load_yaml_text(f"model:\n  inner:\n    _target_: {FAKE}.Inner\n    z: 1\n    xx: 2\n")
    with pytest.raises(
        ConfigError,
        match=r"model\.inner: cannot call .*fake_config_instantiate\.Inner with this section: unknown key\(s\) "
        r"'z', 'xx' \(did you mean 'x'\?\); accepted: x, y",
    ):
        instantiate(cfg.model.inner)
    with pytest.raises(ConfigError, match=r"missing a required argument: 'x'; accepted: x, y"):
        instantiate(ConfigNode({"_target_": f"{FAKE}.Inner"}))


def test_errors_inside_the_target_are_not_wrapped():
    with pytest.raises(RuntimeError, match="boom"):
        instantiate({"_target_": f"{FAKE}.explode", "reason": "boom"})


def test_policy_comes_from_the_loaded_config(tmp_path, monkeypatch):
    cfg = load_yaml_text("tool:\n  _target_: json.dumps\n  obj: [1]\n", policy=TargetPolicy(extra_prefixes=("json",)))
    assert instantiate(cfg.tool) == "[1]"
    assert instantiate(cfg.copy().tool) == "[1]"
    plain = load_yaml_text("tool:\n  _target_: json.dumps\n  obj: [1]\n")
    with pytest.raises(ConfigError, match=r"tool\._target_: 'json\.dumps' is not in the allowlist"):
        instantiate(plain.tool)
    assert instantiate(plain.tool, policy=TargetPolicy(extra_prefixes=("json",))) == "[1]"


def test_fn_key_obeys_the_allowlist():
    with pytest.raises(ConfigError, match=r"loader\.collate_fn: 'os\.system' is not in the allowlist"):
        instantiate(ConfigNode({"_target_": f"{FAKE}.make", "collate_fn": "os.system"}, path="loader"))


def test_fn_key_holding_a_section_is_a_partial_called_per_batch():
    # The reference system's `collate_fn: {_target_: ...default_collater, pad_seq_len_divisible: 64}`.
    from automodel.components.config import Section, build_callable, validate_config

    text = f"loader:\n  _target_: {FAKE}.make\n  collate_fn:\n    _target_: {FAKE}.Inner\n    y: 5\n"
    cfg = load_yaml_text(text)
    validate_config(cfg, {"loader": Section()})  # `x` (the per-call argument) is not reported missing
    args, kwargs = instantiate(cfg.loader)
    collate = kwargs["collate_fn"]
    built = collate(7)
    assert (built.x, built.y) == (7, 5)
    assert build_callable(cfg.loader.collate_fn)(x=1).y == 5
    assert build_callable(f"{FAKE}.make")(1) == ((1,), {})
    bad = load_yaml_text(f"loader:\n  _target_: {FAKE}.make\n  collate_fn:\n    _target_: {FAKE}.Inner\n    z: 5\n")
    with pytest.raises(ConfigError, match=r"unknown key"):
        validate_config(bad, {"loader": Section()})
    with pytest.raises(ConfigError, match=r"loader\.collate_fn: cannot call .*Inner.*unknown key\(s\) 'z'"):
        instantiate(bad.loader)
