"""validate_config(): every problem at once, with dotted keys, suggestions and types."""

import sys
import textwrap
import types

import pytest

from automodel._shared.errors import UserError
from automodel.components.config import ConfigError, ConfigValidationError, Section, load_yaml_text, validate_config

FAKE = "automodel.fake_config_validate"

SOURCE = """
from __future__ import annotations

import dataclasses
from typing import Literal, Optional, Union


@dataclasses.dataclass
class StepScheduler:
    global_batch_size: int
    local_batch_size: int = 1
    max_steps: int | None = None
    num_epochs: int = 1
    shuffle: bool = True


class Optimizer:
    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 name: str = "adam", weight_decay: Optional[float] = 0.0, foreach: bool | None = None,
                 sloppy: int = None, extra: dict = None):
        pass


class Distributed:
    def __init__(self, strategy: Literal["fsdp2", "ddp", "megatron_fsdp"] = "fsdp2", dp_size: Union[int, str] = 1):
        pass


def build_dataset(tokenizer, path_or_dataset: str, split: str = "train", limit: SomethingUndefined = 3):
    pass


def collate(batch, pad_token_id: int = 0):
    pass


def anything(**kwargs):
    pass


class Model:
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, *args, dtype: str = "auto", **kwargs):
        pass
"""


@pytest.fixture(autouse=True)
def fake_module(monkeypatch):
    module = types.ModuleType(FAKE)
    monkeypatch.setitem(sys.modules, FAKE, module)
    exec(textwrap.dedent(SOURCE), module.__dict__)
    monkeypatch.setenv("AUTOMODEL_ALLOWED_TARGETS", FAKE)  # a module of the test, opted in as a user would
    return module


def schema():
    mod = sys.modules[FAKE]
    return {
        "step_scheduler": Section(default_target=mod.StepScheduler, required=True),
        "model": Section(required=True),
        "optimizer": Section(provided={"params"}),
        "distributed": Section(default_target=mod.Distributed, ignore={"activation_checkpointing"}),
        "dataset": Section(provided={"tokenizer"}),
        "dataloader": Section(),
        "seed": Section(),
    }


GOOD = f"""
seed: 1
step_scheduler:
  global_batch_size: 8
  local_batch_size: 2
  max_steps: 10
model:
  _target_: nemo_{FAKE}.Model.from_pretrained
  pretrained_model_name_or_path: /models/x
  trust_remote_code: false
optimizer:
  _target_: {FAKE}.Optimizer
  lr: 1e-5
  betas: [0.9, 0.95]
  weight_decay: 0
  foreach: null
  sloppy: null
distributed:
  strategy: ddp
  dp_size: auto
  activation_checkpointing: true
dataset:
  _target_: {FAKE}.build_dataset
  path_or_dataset: squad
  limit: [whatever]
dataloader:
  _target_: {FAKE}.anything
  collate_fn: {FAKE}.collate
  batch_size: 2
  sampler:
    _target_: {FAKE}.anything
    x: 1
"""


def test_a_good_config_passes():
    validate_config(load_yaml_text(GOOD), schema())


def test_every_problem_is_reported_at_once():
    bad = (
        GOOD.replace("  max_steps: 10", "  max_step: 10")
        .replace("  lr: 1e-5", "  lr: '1e-5'\n  lrr: 1")
        .replace("strategy: ddp", "strategy: fsdp3")
        .replace("  path_or_dataset: squad\n", "")
        .replace("seed: 1", "seed: 1\nstep_schedular: {}")
        .replace(f"collate_fn: {FAKE}.collate", "collate_fn: os.system")
        .replace("    x: 1", "    _target_: subprocess.Popen")
    )
    bad = bad.replace("    _target_: " + FAKE + ".anything\n    _target_", "    _target_")
    with pytest.raises(ConfigValidationError) as info:
        validate_config(load_yaml_text(bad), schema())
    errors = info.value.errors
    expected = [
        r"^step_schedular: unknown top-level section \(did you mean 'step_scheduler'\?\); known sections: "
        r"step_scheduler, model, optimizer",
        r"^step_scheduler\.max_step: unknown key \(did you mean 'max_steps'\?\); accepted: global_batch_size, "
        r"local_batch_size, max_steps, num_epochs, shuffle$",
        r"^optimizer\.lr: expected float, got str '1e-5' \(quoted in the YAML\? remove the quotes\)$",
        r"^optimizer\.lrr: unknown key \(did you mean 'lr'\?\); accepted: params, lr, betas",
        r"^distributed\.strategy: 'fsdp3' is not one of 'fsdp2', 'ddp', 'megatron_fsdp' \(did you mean 'fsdp2'\?\)$",
        r"^dataset\.path_or_dataset: missing required argument of .*build_dataset; add 'path_or_dataset: \.\.\.' "
        r"under 'dataset'$",
        r"^dataloader\.collate_fn: 'os\.system' is not in the allowlist",
        r"^dataloader\.sampler\._target_: 'subprocess\.Popen' is refused: it can load or run arbitrary code",
    ]
    for pattern in expected:
        assert sum(bool(__import__("re").search(pattern, e)) for e in errors) == 1, (pattern, errors)
    assert len(errors) == len(expected), errors
    message = str(info.value)
    assert message.startswith(f"{len(expected)} problem(s) in the config:\n  - ")
    assert isinstance(info.value, ConfigError) and isinstance(info.value, UserError)


@pytest.mark.parametrize(
    "key, value, pattern",
    [
        ("step_scheduler.global_batch_size", "8.0", r"expected int, got float 8\.0"),
        ("step_scheduler.global_batch_size", "true", r"expected int, got bool True"),
        ("step_scheduler.shuffle", "1", r"expected bool, got int 1"),
        ("step_scheduler.max_steps", "ten", r"expected int or None, got str 'ten'"),
        ("optimizer.betas", "0.9", r"expected a list, got float 0\.9"),
        ("optimizer.name", "3", r"expected str, got int 3"),
        ("optimizer.lr", "none", r"expected float, got NoneType None"),
        ("optimizer.extra", "[1]", r"expected a mapping, got list \[1\]"),
        ("distributed.dp_size", "[1]", r"expected int or str, got list \[1\]"),
        # build_dataset has one unresolvable annotation; its other parameters are still checked.
        ("dataset.path_or_dataset", "3", r"expected str, got int 3"),
    ],
)
def test_type_errors(key, value, pattern):
    cfg = load_yaml_text(GOOD)
    section, name = key.split(".")
    cfg[section][name] = load_yaml_text(f"v: {value}").v
    with pytest.raises(ConfigValidationError, match=rf"{key}: {pattern}"):
        validate_config(cfg, schema())


def test_accepted_without_false_errors():
    cfg = load_yaml_text(GOOD)
    cfg.optimizer.lr = 1  # int is fine for float
    cfg.optimizer.extra = {"a": 1}
    cfg.dataset.limit = "anything"  # unresolvable annotation: skipped
    cfg.model.whatever = 1  # **kwargs accepts anything
    validate_config(cfg, schema())


def test_missing_required_section_and_provided_kwargs():
    cfg = load_yaml_text(GOOD)
    del cfg["model"]
    cfg.optimizer = {"_target_": f"{FAKE}.Optimizer"}
    with pytest.raises(ConfigValidationError, match="1 problem") as info:
        validate_config(cfg, schema())
    assert info.value.errors == ["model: required section is missing; add a 'model:' section to the config"]
    # Without `provided`, the recipe-passed argument is reported missing.
    plain = {**schema(), "optimizer": Section()}
    cfg["model"] = load_yaml_text(GOOD).model
    with pytest.raises(ConfigValidationError, match=r"optimizer\.params: missing required argument"):
        validate_config(cfg, plain)


def test_checks_add_to_the_report():
    def batches_divide(cfg):
        s = cfg.step_scheduler
        if s.global_batch_size % s.local_batch_size:
            return [f"step_scheduler: global_batch_size ({s.global_batch_size}) % local_batch_size ... != 0"]
        return []

    def broken(cfg):
        return cfg.nope.deeper

    def user_error(cfg):
        raise ConfigError("dataset: custom problem")

    cfg = load_yaml_text(GOOD)
    cfg.step_scheduler.global_batch_size = 7
    cfg.step_scheduler.bogus = 1
    with pytest.raises(ConfigValidationError) as info:
        validate_config(cfg, schema(), checks=[batches_divide, broken, user_error, lambda cfg: None])
    errors = info.value.errors
    assert errors[0].startswith("step_scheduler.bogus: unknown key")
    assert errors[1].startswith("step_scheduler: global_batch_size (7)")
    assert errors[2].startswith("check 'broken' raised AttributeError: config key 'nope' does not exist")
    assert errors[3] == "dataset: custom problem"
    assert len(errors) == 4


def test_section_normalises_collections():
    section = Section(provided=["a", "b"], ignore="c")
    assert section.provided == frozenset({"a", "b"}) and section.ignore == frozenset({"c"})


def test_tensor_annotations_refuse_yaml_scalars():
    # torch optimizers annotate `lr: float | Tensor`: a string can be neither.
    cfg = load_yaml_text("optimizer:\n  _target_: torch.optim.AdamW\n  lr: fast\n")
    with pytest.raises(ConfigValidationError, match=r"optimizer\.lr: expected float or Tensor, got str 'fast'"):
        validate_config(cfg, {"optimizer": Section(provided=frozenset({"params"}))})
    cfg.optimizer.lr = 1e-3
    validate_config(cfg, {"optimizer": Section(provided=frozenset({"params"}))})


def test_config_dataclasses_run_their_own_checks_during_validation():
    from dataclasses import dataclass

    from automodel._shared.errors import UserError

    @dataclass
    class Retention:
        keep_last_n: int | None = None

        def __post_init__(self) -> None:
            if self.keep_last_n is not None and self.keep_last_n < 1:
                raise UserError(f"retention.keep_last_n must be >= 1, got {self.keep_last_n}")

    cfg = load_yaml_text("retention:\n  keep_last_n: 0\n")
    with pytest.raises(ConfigValidationError) as info:
        validate_config(cfg, {"retention": Section(default_target=Retention)})
    assert info.value.errors == ["retention.keep_last_n must be >= 1, got 0"]
    validate_config(load_yaml_text("retention:\n  keep_last_n: 2\n"), {"retention": Section(default_target=Retention)})
