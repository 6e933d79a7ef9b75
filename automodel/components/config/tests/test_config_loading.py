"""YAML loading, literal parsing, env interpolation and the ConfigNode API."""

import copy
import math

import pytest

from automodel.components.config import ConfigError, ConfigNode, load_config, load_yaml_text

YAML = """
optimizer:
  lr: 1e-5
  betas: [0.9, 0.95]
  eps: 1.0e-8
  quoted_lr: '1e-5'
  quoted_none: "none"
model:
  pretrained_model_name_or_path: meta-llama/Llama-3.2-1B
  dtype: None
  trust: False
  also_null: null
checkpoint:
  checkpoint_dir: checkpoints/
  enabled: TRUE
  pair: (1, 2)
"""


def test_plain_scalars_parse_as_literals_and_quoted_stay_strings():
    cfg = load_yaml_text(YAML)
    assert cfg.optimizer.lr == 1e-5 and isinstance(cfg.optimizer.lr, float)
    assert cfg.optimizer.betas == [0.9, 0.95]
    assert cfg.optimizer.eps == 1e-8
    assert cfg.optimizer.quoted_lr == "1e-5"
    assert cfg.optimizer.quoted_none == "none"
    assert cfg.model.pretrained_model_name_or_path == "meta-llama/Llama-3.2-1B"
    assert cfg.model.dtype is None and cfg.model.also_null is None
    assert cfg.model.trust is False and cfg.checkpoint.enabled is True
    assert cfg.checkpoint.checkpoint_dir == "checkpoints/"
    assert cfg.checkpoint.pair == (1, 2)


def test_plain_words_never_become_python_objects():
    cfg = load_yaml_text("a: ...\nb: 3j\nc: b'x'\nd: inf\ne: hello world\n")
    assert cfg.a == "..." and cfg.b == "3j" and cfg.c == "b'x'" and cfg.e == "hello world"
    assert math.isinf(cfg.d)


def test_keys_are_not_literal_parsed():
    cfg = load_yaml_text("1e-5: a\nnone: b\n")
    assert list(cfg) == ["1e-5", "none"]


def test_env_interpolation(monkeypatch):
    monkeypatch.setenv("HOME", "/home/me")
    monkeypatch.delenv("RUN", raising=False)
    monkeypatch.delenv("LR", raising=False)
    monkeypatch.setenv("STEPS", "20")
    cfg = load_yaml_text(
        "out: ${HOME}/runs/${RUN,default}\n"
        "lr: ${LR,1e-5}\n"
        "quoted_lr: '${LR,1e-5}'\n"
        "steps: ${STEPS}\n"
        "label: run-${STEPS}\n"
        "items: [a, '${STEPS}']\n"
    )
    assert cfg.out == "/home/me/runs/default"
    assert cfg.lr == 1e-5 and isinstance(cfg.lr, float)
    assert cfg.quoted_lr == "1e-5"
    assert cfg.steps == 20
    assert cfg.label == "run-20"
    assert cfg["items"] == ["a", "20"]


def test_omegaconf_env_spelling_of_the_reference_configs(monkeypatch):
    monkeypatch.setenv("HOME", "/home/me")
    monkeypatch.delenv("RUN", raising=False)
    cfg = load_yaml_text("out: ${oc.env:HOME}/runs/${oc.env:RUN,first}\nsteps: ${oc.env:RUN,12}\n")
    assert (cfg.out, cfg.steps) == ("/home/me/runs/first", 12)
    assert cfg.to_yaml() == "out: ${oc.env:HOME}/runs/${oc.env:RUN,first}\nsteps: ${oc.env:RUN,12}\n"


def test_missing_env_var_names_key_and_variable(monkeypatch):
    monkeypatch.delenv("DATA_DIR_XYZ", raising=False)
    with pytest.raises(ConfigError, match=r"dataset\.path: environment variable 'DATA_DIR_XYZ' is not set"):
        load_yaml_text("dataset:\n  path: ${DATA_DIR_XYZ}/train.jsonl\n")


def test_secrets_stay_out_of_yaml_and_repr(monkeypatch):
    secret = "sk-very-secret-123"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    cfg = load_yaml_text("wandb:\n  api_key: ${WANDB_API_KEY}\n  tags: ['${WANDB_API_KEY}', x]\n  project: p\n")
    assert cfg.wandb.api_key == secret
    assert cfg.to_dict()["wandb"]["api_key"] == secret
    text = cfg.to_yaml()
    assert secret not in text and "${WANDB_API_KEY}" in text
    assert secret not in repr(cfg) and secret not in str(cfg.wandb)
    assert cfg.to_dict(raw=True)["wandb"] == {
        "api_key": "${WANDB_API_KEY}",
        "tags": ["${WANDB_API_KEY}", "x"],
        "project": "p",
    }
    assert secret in cfg.to_yaml(raw=False)
    # The saved YAML reloads to the same config: placeholders are resolved again.
    assert load_yaml_text(text).to_dict() == cfg.to_dict()
    assert cfg.copy().to_yaml() == text


def test_to_yaml_quotes_strings_that_would_reload_as_something_else():
    cfg = load_yaml_text("a: 'none'\nb: '1e-5'\nc: '(1, 2)'\nd: 'true'\ne: plain\nf: 1e-5\ng: [1, 2]\n")
    again = load_yaml_text(cfg.to_yaml())
    assert again.to_dict() == cfg.to_dict()
    assert again.a == "none" and again.f == 1e-5


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  name: x\n  bad: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+:\d+: invalid YAML"):
        load_config(path)


def test_duplicate_key_is_an_error(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("optimizer:\n  lr: 1\n  lr: 2\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml:3:3: invalid YAML: duplicate key 'lr'"):
        load_config(path)


def test_missing_file_and_non_mapping_top_level(tmp_path):
    with pytest.raises(ConfigError, match=r"config file '.*nope\.yaml' not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level of a config must be a mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ConfigError, match="empty"):
        load_config(tmp_path / "empty.yaml")
    with pytest.raises(ConfigError, match=r"key 1 under 'labels' is not a string"):
        load_yaml_text("labels:\n  1: one\n")


def test_node_access_and_paths():
    cfg = load_yaml_text("dataset:\n  column_mapping:\n    question: q\n  splits:\n    - name: train\n")
    node = cfg.dataset.column_mapping
    assert isinstance(node, ConfigNode) and node.path == "dataset.column_mapping"
    assert cfg.dataset.splits[0].path == "dataset.splits[0]"
    assert cfg["dataset"]["column_mapping"]["question"] == "q"
    assert "dataset" in cfg and "nope" not in cfg and len(cfg.dataset) == 2
    assert list(cfg.dataset) == ["column_mapping", "splits"]
    assert cfg.get("dataset.column_mapping.question") == "q"
    assert cfg.get("dataset.splits.0.name") == "train"
    assert cfg.get("dataset.nope.deeper", 7) == 7
    assert getattr(cfg, "x", None) is None
    with pytest.raises(
        AttributeError, match=r"'dataset\.colum_mapping' does not exist \(did you mean 'column_mapping'\?\)"
    ):
        _ = cfg.dataset.colum_mapping
    with pytest.raises(AttributeError, match=r"keys under 'dataset': column_mapping, splits"):
        _ = cfg.dataset.nope
    assert cfg == {"dataset": {"column_mapping": {"question": "q"}, "splits": [{"name": "train"}]}}


def test_set_copy_and_mutation():
    cfg = ConfigNode({"a": {"b": 1}})
    cfg.set("a.c.d", [1, {"e": 2}])
    assert cfg.a.c.d[1].e == 2 and cfg.a.c.d[1].path == "a.c.d[1]"
    cfg.x = 5
    assert cfg["x"] == 5
    del cfg.x
    assert "x" not in cfg
    clone = cfg.copy()
    clone.a.b = 99
    clone.a.c.d[1].e = 3
    assert cfg.a.b == 1 and cfg.a.c.d[1].e == 2
    assert copy.deepcopy(cfg) == cfg
    with pytest.raises(ConfigError, match=r"cannot set 'a\.b\.z': 'a\.b' holds 1, not a mapping"):
        cfg.set("a.b.z", 1)
    with pytest.raises(AttributeError, match="use item access"):
        cfg.path = "x"
    assert "ConfigNode(" in repr(cfg) and "'b': 1" in repr(cfg)


def test_python_tags_are_refused():
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_yaml_text("x: !!python/object/apply:os.system ['echo hi']\n")


def test_reference_style_config_round_trips():
    text = """
step_scheduler:
  global_batch_size: 32
  local_batch_size: 4
  ckpt_every_steps: 1000
model:
  _target_: nemo_automodel.NeMoAutoModelForCausalLM.from_pretrained
  pretrained_model_name_or_path: meta-llama/Llama-3.2-1B
dataset:
  _target_: nemo_automodel.components.datasets.llm.squad.make_squad_dataset
  dataset_name: rajpurkar/squad
  split: train
dataloader:
  _target_: torchdata.stateful_dataloader.StatefulDataLoader
  collate_fn: nemo_automodel.components.datasets.utils.default_collater
  shuffle: false
optimizer:
  _target_: torch.optim.Adam
  betas: [0.9, 0.999]
  eps: 1e-8
  lr: 1.0e-5
  weight_decay: 0
checkpoint:
  enabled: true
  checkpoint_dir: checkpoints/
  model_save_format: safetensors
"""
    cfg = load_yaml_text(text)
    assert cfg.optimizer.eps == 1e-8 and cfg.optimizer.lr == 1e-5 and cfg.optimizer.weight_decay == 0
    assert cfg.dataloader.shuffle is False
    assert load_yaml_text(cfg.to_yaml()) == cfg
