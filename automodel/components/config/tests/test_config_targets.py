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


def test_listed_targets_resolve_by_exact_name():
    import torch

    squad = "automodel.components.datasets.llm.squad.make_squad_dataset"
    make_squad_dataset = resolve_target(squad)  # (resolved, not imported: components do not import each other)
    assert make_squad_dataset.__module__ + "." + make_squad_dataset.__name__ == squad
    assert resolve_target("torch.optim.AdamW") is torch.optim.AdamW
    assert resolve_target("  torch.optim.AdamW ") is torch.optim.AdamW
    # aliases: another spelling of a listed callable resolves to the same object
    assert resolve_target("torch.optim.adamw.AdamW") is torch.optim.AdamW
    assert resolve_target("automodel.components.datasets.make_squad_dataset") is make_squad_dataset


def test_opted_in_targets_resolve(fake_module, monkeypatch):
    policy = TargetPolicy(extra_prefixes=(FAKE,))
    assert resolve_target(f"{FAKE}.Builder", policy=policy) is fake_module.Builder
    assert resolve_target(f"{FAKE}.Builder.create", policy=policy)().size == 2
    monkeypatch.setenv("AUTOMODEL_ALLOWED_TARGETS", f"{FAKE}.Builder")  # an exact name is an opt-in too
    assert resolve_target(f"{FAKE}.Builder.create")().size == 2
    with pytest.raises(ConfigError, match="not in the allowlist"):
        resolve_target(f"{FAKE}.VALUE")


def test_nemo_automodel_names_map_to_automodel():
    make_squad_dataset = resolve_target("automodel.components.datasets.llm.squad.make_squad_dataset")
    assert resolve_target("nemo_automodel.components.datasets.llm.squad.make_squad_dataset") is make_squad_dataset
    with pytest.raises(ConfigError, match=r"reference-system \(NeMo Automodel\) name with no counterpart here yet"):
        resolve_target("nemo_automodel.NeMoAutoModelForNothing")
    with pytest.raises(ConfigError, match="no counterpart here yet"):
        resolve_target("nemo_automodel.components.no_such_component_xyz.Thing")


@pytest.mark.parametrize(
    "target, fragment",
    [
        # Not listed: refused, and the message names the narrowest opt-in.
        (
            "os.system",
            r"'os\.system' is not in the allowlist.*--allow-target os\.system or set AUTOMODEL_ALLOWED_TARGETS=os\.system",
        ),
        ("json.dumps", r"--allow-target json\.dumps"),
        ("torchx.nn.Linear", r"--allow-target torchx\.nn\.Linear"),
        # Whole libraries are not allowed any more: only the listed builders inside them.
        ("datasets.Dataset.from_dict", r"not in the allowlist"),
        ("datasets.Dataset.to_csv", r"not in the allowlist"),
        ("torch.save", r"not in the allowlist"),
        ("torch.optim.Optimizer.load_state_dict", r"not in the allowlist"),
        ("automodel.components.checkpoint.Checkpointer", r"not in the allowlist"),
        # Code-loading entry points are refused outright (even an opt-in does not reach them).
        ("subprocess.Popen", r"refused: it can load or run arbitrary code"),
        ("builtins.eval", r"refused"),
        ("importlib.import_module", r"refused"),
        ("torch.hub.load", r"refused"),
        ("torch.load", r"refused"),
        ("torch.utils.cpp_extension.load_inline", r"refused"),
        ("transformers.utils.import_utils.direct_transformers_import", r"refused"),
        ("transformers.dynamic_module_utils.get_class_from_dynamic_module", r"refused"),
        ("transformers.modeling_utils.load_state_dict", r"refused"),
        ("peft.utils.save_and_load.torch_load", r"refused"),
        ("torch.distributed.checkpoint.format_utils.dcp_to_torch_save", r"refused"),
        ("automodel.nothing_here_xyz", r"does not exist in automodel"),
    ],
)
def test_unlisted_targets_are_refused(target, fragment):
    with pytest.raises(ConfigError, match=rf"^model\._target_: .*{fragment}"):
        resolve_target(target, key="model._target_")


@pytest.mark.parametrize(
    "target, fragment",
    [
        # Walking through a module that an opted-in package imported is judged by that module.
        (f"{FAKE}.os.system", r"resolves into 'os', which you did not allow"),
        # A re-export is judged by where the object really lives.
        (f"{FAKE}.system", r"resolves into '(posix|nt)', which you did not allow"),
    ],
)
def test_opt_ins_do_not_reach_through_imports(target, fragment, fake_module):
    with pytest.raises(ConfigError, match=fragment):
        resolve_target(target, policy=TargetPolicy(extra_prefixes=(FAKE,)))


def test_denied_entry_points_stay_refused_under_a_broad_opt_in(monkeypatch):
    monkeypatch.setenv("AUTOMODEL_ALLOWED_TARGETS", "torch,transformers,builtins")
    for target in ("torch.hub.load", "torch.load", "transformers.utils.import_utils.direct_transformers_import"):
        with pytest.raises(ConfigError, match="refused"):
            resolve_target(target)
    assert not TargetPolicy(extra_prefixes=("torch.hub",)).is_allowed("torch.hub.load")


@pytest.mark.parametrize(
    "target",
    ["math.__loader__", "math.sqrt.__call__", f"{FAKE}._private_fn", f"{FAKE}.Builder._hidden", "torch._C.Generator"],
)
def test_private_names_never_resolve(target, fake_module):
    with pytest.raises(ConfigError, match="private name"):
        resolve_target(target, policy=TargetPolicy(extra_prefixes=("os", "math", "torch", FAKE)))


def test_private_component_packages_are_allowed_only_in_components():
    # `_peft` / `_transformers` pass the private check (a listed name lives there).
    assert resolve_target("automodel.components._peft.lora.PeftConfig").__name__ == "PeftConfig"
    with pytest.raises(ConfigError, match="private name '_peft'"):
        resolve_target("peft._peft.Thing")
    with pytest.raises(ConfigError, match="private name '_shared'"):
        resolve_target("automodel._shared.errors.UserError")


def test_opt_in_prefixes_match_whole_segments(monkeypatch):
    policy = TargetPolicy(extra_prefixes=("json.decoder",))
    assert resolve_target("json.decoder.JSONDecoder", policy=policy).__name__ == "JSONDecoder"
    with pytest.raises(ConfigError, match="not in the allowlist"):
        resolve_target("json.dumps", policy=policy)
    assert TargetPolicy().is_allowed("torch.optim.AdamW")
    assert not TargetPolicy().is_allowed("torch.optim.Optimizer")
    assert not TargetPolicy(extra_prefixes=("jso",)).is_allowed("json.decoder.JSONDecoder")
    monkeypatch.setenv("AUTOMODEL_ALLOWED_TARGETS", " json , textwrap")
    assert resolve_target("json.dumps").__name__ == "dumps"
    assert resolve_target("textwrap.dedent").__name__ == "dedent"


def test_invalid_prefixes_are_reported(monkeypatch):
    with pytest.raises(ConfigError, match=r"TargetPolicy.extra_prefixes: 'my-pkg' is not a dotted name"):
        TargetPolicy(extra_prefixes=("my-pkg",))
    assert TargetPolicy(extra_prefixes="json").extra_prefixes == ("json",)
    monkeypatch.setenv("AUTOMODEL_ALLOWED_TARGETS", "ok,bad pkg")
    with pytest.raises(ConfigError, match="AUTOMODEL_ALLOWED_TARGETS: 'bad pkg'"):
        resolve_target("json.dumps")


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
    with pytest.raises(ConfigError, match=r"opt\._target_: .*'torch\.optim\.AdamV'.*did you mean 'torch\.optim\.Adam'"):
        resolve_target("torch.optim.AdamV", key="opt._target_")
    math_opt_in = TargetPolicy(extra_prefixes=("math",))
    with pytest.raises(ConfigError, match=r"opt\._target_: 'math' has no attribute 'sqr' .*did you mean 'sqrt'"):
        resolve_target("math.sqr", key="opt._target_", policy=math_opt_in)
    with pytest.raises(ConfigError, match=r"module 'automodel_no_such_pkg' not found"):
        resolve_target("automodel_no_such_pkg.X", policy=TargetPolicy(extra_prefixes=("automodel_no_such_pkg",)))
    with pytest.raises(ConfigError, match="not callable"):
        resolve_target("math.pi", policy=math_opt_in)
    with pytest.raises(ConfigError, match="not a dotted import path"):
        resolve_target("math.sqrt()")
    with pytest.raises(ConfigError, match="expected a dotted import path"):
        resolve_target(42, key="x._target_")
