"""`_target_` resolution: the allowlist, private names, file targets and the nemo_automodel mapping."""

import sys
import textwrap
import types

import pytest

from automodel.components.config import ConfigError, TargetPolicy, resolve_target

FAKE = "automodel.fake_config_targets"


@pytest.fixture
def fake_module(monkeypatch):
    """A module under `automodel.` (allowed by default) that also re-exports os.system."""
    module = types.ModuleType(FAKE)
    monkeypatch.setitem(sys.modules, FAKE, module)
    exec(
        textwrap.dedent(
            """
            import os
            from os import system

            class Builder:
                def __init__(self, size=1):
                    self.size = size

                @classmethod
                def create(cls, size=2):
                    return cls(size)

                def _hidden(self):
                    pass

            def _private_fn():
                pass

            VALUE = 3
            """
        ),
        module.__dict__,
    )
    return module


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    monkeypatch.delenv("AUTOMODEL_ALLOWED_TARGETS", raising=False)
    monkeypatch.delenv("AUTOMODEL_ALLOW_FILE_TARGETS", raising=False)


def test_resolves_classes_functions_and_methods(fake_module):
    assert resolve_target("math.sqrt") is __import__("math").sqrt
    assert resolve_target(f"{FAKE}.Builder") is fake_module.Builder
    assert resolve_target(f"{FAKE}.Builder.create")().size == 2
    assert resolve_target("  math.floor ") is __import__("math").floor


def test_nemo_automodel_names_map_to_automodel(fake_module):
    assert resolve_target(f"nemo_{FAKE}.Builder") is fake_module.Builder
    assert resolve_target(f"nemo_{FAKE}.Builder.create")().size == 2
    with pytest.raises(ConfigError, match=r"reference-system \(NeMo Automodel\) name with no counterpart here yet"):
        resolve_target(f"nemo_{FAKE}.NeMoAutoModelForNothing")
    with pytest.raises(ConfigError, match="no counterpart here yet"):
        resolve_target("nemo_automodel.components.no_such_component_xyz.Thing")


@pytest.mark.parametrize(
    "target, fragment",
    [
        ("os.system", r"'os\.system' is not in the allowlist.*--allow-target os or set AUTOMODEL_ALLOWED_TARGETS=os"),
        ("subprocess.Popen", r"--allow-target subprocess"),
        ("builtins.eval", r"--allow-target builtins"),
        ("torchx.nn.Linear", r"--allow-target torchx"),
        # Walking through a module that an allowed package imported is judged by that module.
        (f"{FAKE}.os.system", r"resolves into 'os'"),
        # A re-export is judged by where the object really lives.
        (f"{FAKE}.system", r"resolves into 'posix'|resolves into 'nt'"),
        ("torch.hub.load", r"refused: it can load or run arbitrary code"),
        ("torch.utils.cpp_extension.load_inline", r"refused"),
    ],
)
def test_allowlist_refuses(target, fragment, fake_module):
    with pytest.raises(ConfigError, match=rf"^model\._target_: .*{fragment}"):
        resolve_target(target, key="model._target_")


@pytest.mark.parametrize(
    "target",
    ["math.__loader__", "math.sqrt.__call__", f"{FAKE}._private_fn", f"{FAKE}.Builder._hidden", "torch._C.Generator"],
)
def test_private_names_never_resolve(target, fake_module):
    with pytest.raises(ConfigError, match="private name"):
        resolve_target(target, policy=TargetPolicy(extra_prefixes=("os",)))


def test_private_component_packages_are_allowed_only_in_components():
    # `_peft` / `_transformers` pass the private check (then fail only because nothing is installed there).
    with pytest.raises(ConfigError, match="has no attribute|no counterpart|not found") as info:
        resolve_target("automodel.components._peft.nothing_here_xyz.Thing")
    assert "private" not in str(info.value)
    with pytest.raises(ConfigError, match="private name '_peft'"):
        resolve_target("peft._peft.Thing")
    with pytest.raises(ConfigError, match="private name '_shared'"):
        resolve_target("automodel._shared.errors.UserError")


def test_opt_in_prefixes_match_whole_segments(monkeypatch):
    policy = TargetPolicy(extra_prefixes=("json.decoder",))
    assert resolve_target("json.decoder.JSONDecoder", policy=policy).__name__ == "JSONDecoder"
    with pytest.raises(ConfigError, match="not in the allowlist"):
        resolve_target("json.dumps", policy=policy)
    monkeypatch.setenv("AUTOMODEL_ALLOWED_TARGETS", " json , textwrap")
    assert resolve_target("json.dumps").__name__ == "dumps"
    assert resolve_target("textwrap.dedent").__name__ == "dedent"
    assert TargetPolicy().is_allowed("torch.optim.AdamW")
    assert not TargetPolicy().is_allowed("torchx.optim")
    assert not TargetPolicy().is_allowed("torc")
    # A deny entry wins over an explicit opt-in.
    assert not TargetPolicy(extra_prefixes=("torch.hub",)).is_allowed("torch.hub.load")


def test_invalid_prefixes_are_reported(monkeypatch):
    with pytest.raises(ConfigError, match=r"TargetPolicy.extra_prefixes: 'my-pkg' is not a dotted module path"):
        TargetPolicy(extra_prefixes=("my-pkg",))
    assert TargetPolicy(extra_prefixes="json").extra_prefixes == ("json",)
    monkeypatch.setenv("AUTOMODEL_ALLOWED_TARGETS", "ok,bad pkg")
    with pytest.raises(ConfigError, match="AUTOMODEL_ALLOWED_TARGETS: 'bad pkg'"):
        resolve_target("math.sqrt")


def test_file_targets_need_opt_in(tmp_path, monkeypatch):
    path = tmp_path / "my_model.py"
    path.write_text("def build(n=1):\n    return ('built', n)\n\ndef _secret():\n    pass\n")
    target = f"{path}:build"
    with pytest.raises(
        ConfigError, match=r"model\._target_: file target .* is disabled.*AUTOMODEL_ALLOW_FILE_TARGETS=1"
    ):
        resolve_target(target, key="model._target_")
    fn = resolve_target(target, policy=TargetPolicy(allow_file_targets=True))
    assert fn(n=3) == ("built", 3)
    monkeypatch.setenv("AUTOMODEL_ALLOW_FILE_TARGETS", "1")
    assert resolve_target(target) is fn  # the file is loaded once
    with pytest.raises(ConfigError, match="private name"):
        resolve_target(f"{path}:_secret")
    with pytest.raises(ConfigError, match=r"has no attribute 'buld'"):
        resolve_target(f"{path}:buld")
    with pytest.raises(ConfigError, match="not found"):
        resolve_target(f"{tmp_path}/missing.py:build")


def test_lookup_errors_are_helpful():
    with pytest.raises(ConfigError, match=r"opt\._target_: 'math' has no attribute 'sqr' .*did you mean 'sqrt'"):
        resolve_target("math.sqr", key="opt._target_")
    with pytest.raises(ConfigError, match=r"module 'automodel_no_such_pkg' not found"):
        resolve_target("automodel_no_such_pkg.X", policy=TargetPolicy(extra_prefixes=("automodel_no_such_pkg",)))
    with pytest.raises(ConfigError, match="not callable"):
        resolve_target("math.pi")
    with pytest.raises(ConfigError, match="not a dotted import path"):
        resolve_target("math.sqrt()")
    with pytest.raises(ConfigError, match="expected a dotted import path"):
        resolve_target(42, key="x._target_")
