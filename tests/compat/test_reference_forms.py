"""Every form found in the reference system's (NeMo Automodel's) example YAMLs, in small configs of our own on the
tiny offline models: it validates and means what it means there, or `validate` refuses it with one `error:` line
that names the key (docs/compatibility.md lists them all). A few 2-step runs check that the accepted forms train."""

from __future__ import annotations

import copy
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from automodel.cli.app import main as cli_main
from automodel.components.config import load_config
from automodel.recipes.llm import finetune as llm_finetune
from automodel.recipes.llm.tests.conftest import DATA
from automodel.recipes.vlm import finetune as vlm_finetune

NEMO = "nemo_automodel.components"
DROP = object()  # a change that removes the key


@pytest.fixture(autouse=True)
def no_opt_ins(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AUTOMODEL_ALLOWED_TARGETS", "AUTOMODEL_ALLOW_FILE_TARGETS", "AUTOMODEL_TRUST_REMOTE_CODE"):
        monkeypatch.delenv(name, raising=False)


# --- configs --------------------------------------------------------------------------------------------------------
def llm_config(model_dir: Path, ckpt_dir: Path) -> dict[str, Any]:
    """A small fine-tune in the reference system's spelling: two steps on the shipped QA facts."""
    squad = f"{NEMO}.datasets.llm.squad.make_squad_dataset"
    return {
        "step_scheduler": {"global_batch_size": 2, "local_batch_size": 1, "max_steps": 2, "val_every_steps": 2},
        "rng": {"_target_": f"{NEMO}.training.rng.StatefulRNG", "seed": 7, "ranked": True},
        "model": {
            "_target_": "nemo_automodel.NeMoAutoModelForCausalLM.from_pretrained",
            "pretrained_model_name_or_path": str(model_dir),
        },
        "loss_fn": {"_target_": f"{NEMO}.loss.masked_ce.MaskedCrossEntropy"},
        "dataset": {
            "_target_": squad,
            "dataset_name": str(DATA / "train.jsonl"),
            "limit_dataset_samples": 8,
            "seq_length": 192,
        },
        "dataloader": {
            "_target_": "torchdata.stateful_dataloader.StatefulDataLoader",
            "collate_fn": f"{NEMO}.datasets.utils.default_collater",
        },
        "validation_dataset": {
            "_target_": squad,
            "dataset_name": str(DATA / "validation.jsonl"),
            "limit_dataset_samples": 4,
            "seq_length": 192,
        },
        "validation_dataloader": {
            "_target_": "torchdata.stateful_dataloader.StatefulDataLoader",
            "collate_fn": f"{NEMO}.datasets.utils.default_collater",
        },
        "optimizer": {"_target_": "torch.optim.AdamW", "lr": 5.0e-4, "weight_decay": 0.0},
        "checkpoint": {"enabled": False, "checkpoint_dir": str(ckpt_dir)},
        "logging": {"progress_bar": False},
    }


def vlm_config(model_dir: Path, data: Path, ckpt_dir: Path) -> dict[str, Any]:
    """The Qwen2.5-VL examples' shape on the tiny Qwen2.5-VL and the rendered-shapes data."""
    conversations = f"{NEMO}.datasets.vlm.datasets.make_conversation_dataset"
    return {
        "recipe": "FinetuneRecipeForVLM",
        "step_scheduler": {"global_batch_size": 2, "local_batch_size": 1, "max_steps": 2, "val_every_steps": 2},
        "rng": {"_target_": f"{NEMO}.training.rng.StatefulRNG", "seed": 3, "ranked": True},
        "model": {
            "_target_": "nemo_automodel.NeMoAutoModelForImageTextToText.from_pretrained",
            "pretrained_model_name_or_path": str(model_dir),
            "torch_dtype": "torch.float32",
            "use_liger_kernel": False,
            "attn_implementation": "sdpa",
        },
        # min/max_pixels as in the reference's Qwen2.5-VL configs, sized for the 32x32 test images
        "processor": {
            "_target_": "transformers.AutoProcessor.from_pretrained",
            "pretrained_model_name_or_path": str(model_dir),
            "min_pixels": 1024,
            "max_pixels": 1024,
        },
        "distributed": {"dp_size": None, "tp_size": 1, "cp_size": 1},
        "distributed_config": {"_target_": f"{NEMO}.distributed.config.FSDP2Config", "sequence_parallel": False},
        "loss_fn": {"_target_": f"{NEMO}.loss.masked_ce.MaskedCrossEntropy"},
        "dataset": {"_target_": conversations, "path_or_dataset": str(data), "split": "train[:8]"},
        "dataloader": {
            "_target_": "torchdata.stateful_dataloader.StatefulDataLoader",
            "num_workers": 0,
            "pin_memory": True,
            "collate_fn": {"_target_": f"{NEMO}.datasets.vlm.collate_fns.qwen2_5_collate_fn"},
        },
        "validation_dataset": {"_target_": conversations, "path_or_dataset": str(data), "split": "train[20:]"},
        "validation_dataloader": {"_target_": "torchdata.stateful_dataloader.StatefulDataLoader"},
        "optimizer": {"_target_": "torch.optim.AdamW", "lr": 1e-3, "weight_decay": 0.01, "betas": [0.9, 0.95]},
        "freeze_config": {"freeze_embeddings": True, "freeze_vision_tower": True, "freeze_language_model": False},
        "checkpoint": {"enabled": False, "checkpoint_dir": str(ckpt_dir)},
        "logging": {"progress_bar": False},
    }


def changed(cfg: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A copy with each dotted key set (or removed with DROP); missing sections are created."""
    cfg = copy.deepcopy(cfg)
    for dotted, value in changes.items():
        *owners, key = dotted.split(".")
        node = cfg
        for owner in owners:
            node = node.setdefault(owner, {})
        if value is DROP:
            node.pop(key, None)
        else:
            node[key] = value
    return cfg


def write(path: Path, cfg: dict[str, Any] | str) -> Path:
    path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[object, str]:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(list(argv))
    _, err = capsys.readouterr()
    return exit_info.value.code, err


def assert_valid(capsys: pytest.CaptureFixture, domain: str, path: Path, *flags: str) -> None:
    code, err = run_cli(capsys, domain, "validate", "-c", str(path), *flags)
    assert code == 0, err


def assert_refused(capsys: pytest.CaptureFixture, domain: str, path: Path, match: str) -> str:
    """Exit status 2, exactly one `error:` line, no traceback, and a message matching `match`."""
    code, err = run_cli(capsys, domain, "validate", "-c", str(path))
    assert code == 2, err
    assert sum(line.startswith("error:") for line in err.splitlines()) == 1 and "Traceback" not in err, err
    message = err[err.index("error:") :]
    assert re.search(match, message), message
    return message


@pytest.fixture()
def base(tiny_model_dir: Path, tmp_path: Path) -> dict[str, Any]:
    return llm_config(tiny_model_dir, tmp_path / "ckpt")


# --- forms that validate with the reference meaning ------------------------------------------------------------------
SQUAD_COLLATE = f"{NEMO}.datasets.utils.default_collater"
WORKS: dict[str, dict[str, Any]] = {
    "recipe as a class name": {"recipe": "TrainFinetuneRecipeForNextTokenPrediction"},
    "recipe as a _target_": {
        "recipe": {"_target_": "nemo_automodel.recipes.llm.train_ft.TrainFinetuneRecipeForNextTokenPrediction"}
    },
    "step_scheduler epochs and checkpoint cadence": {
        "step_scheduler.num_epochs": 1,
        "step_scheduler.ckpt_every_steps": 2,
    },
    "dist_env nccl (gloo without CUDA)": {"dist_env": {"backend": "nccl", "timeout_minutes": 1}},
    "model torch_dtype bf16": {"model.torch_dtype": "bf16"},
    "model torch_dtype bfloat16": {"model.torch_dtype": "bfloat16"},
    "model torch_dtype torch.bfloat16": {"model.torch_dtype": "torch.bfloat16"},
    "model torch_dtype auto": {"model.torch_dtype": "auto"},
    "model dtype (transformers 5 name)": {"model.dtype": "bfloat16"},
    "model kernel switches (ignored, warned)": {
        "model.use_liger_kernel": False,
        "model.use_sdpa_patching": False,
        "model.force_hf": True,
    },
    "model attn_implementation and trust_remote_code false": {
        "model.attn_implementation": "eager",
        "model.trust_remote_code": False,
    },
    "model quantization_config FineGrainedFP8Config dequantize": {
        "model.quantization_config": {"_target_": "transformers.FineGrainedFP8Config", "dequantize": True}
    },
    "distributed sizes + distributed_config FSDP2Config": {
        "distributed": {"dp_size": "none", "tp_size": 1, "cp_size": 1},
        "distributed_config": {"_target_": f"{NEMO}.distributed.config.FSDP2Config", "sequence_parallel": False},
    },
    "distributed_config MegatronFSDPConfig": {
        "distributed": {"dp_size": None, "tp_size": 1, "cp_size": 1},
        "distributed_config": {"_target_": f"{NEMO}.distributed.config.MegatronFSDPConfig"},
    },
    "distributed_config DDPConfig": {"distributed_config": {"_target_": f"{NEMO}.distributed.config.DDPConfig"}},
    "distributed strategy with pp_size 1 and ep_size null": {
        "distributed": {
            "strategy": "fsdp2",
            "dp_size": None,
            "tp_size": 1,
            "cp_size": 1,
            "pp_size": 1,
            "ep_size": None,
            "sequence_parallel": False,
            "activation_checkpointing": False,
        }
    },
    "distributed strategy megatron_fsdp": {"distributed": {"strategy": "megatron_fsdp", "dp_size": None}},
    "distributed FSDP2Manager _target_": {
        "distributed": {
            "_target_": f"{NEMO}.distributed.fsdp2.FSDP2Manager",
            "dp_size": None,
            "dp_replicate_size": 1,
            "tp_size": 1,
            "cp_size": 1,
            "sequence_parallel": False,
        }
    },
    "compile with backend null": {
        "compile": {"enabled": False, "mode": "default", "fullgraph": False, "dynamic": True, "backend": None}
    },
    "clip_grad_norm": {"clip_grad_norm": {"max_norm": 1.0}},
    "loss_fn FusedLinearCrossEntropy": {"loss_fn": {"_target_": f"{NEMO}.loss.linear_ce.FusedLinearCrossEntropy"}},
    "collate_fn as a section": {"dataloader.collate_fn": {"_target_": SQUAD_COLLATE}},
    "collate_fn section with pad_seq_len_divisible": {
        "dataloader.collate_fn": {"_target_": SQUAD_COLLATE, "pad_seq_len_divisible": 16}
    },
    "dataloader shuffle, workers, pin_memory": {
        "dataloader.shuffle": True,
        "dataloader.num_workers": 0,
        "dataloader.pin_memory": True,
    },
    "packed_sequence off": {"packed_sequence": {"packed_sequence_size": 0}},
    "packed_sequence with the THD collater": {
        "packed_sequence": {"packed_sequence_size": 256, "split_across_pack": False, "packing_strategy": "thd"},
        "dataloader.collate_fn": f"{NEMO}.datasets.utils.packed_sequence_thd_collater",
    },
    "optimizer Adam with betas and eps": {
        "optimizer": {
            "_target_": "torch.optim.Adam",
            "betas": [0.9, 0.999],
            "eps": 1e-8,
            "lr": 1.0e-5,
            "weight_decay": 0,
        }
    },
    "lr_scheduler cosine with min_lr": {
        "lr_scheduler": {"lr_decay_style": "cosine", "min_lr": 1.0e-6, "lr_warmup_steps": 0}
    },
    "checkpoint reference keys": {
        "checkpoint.model_save_format": "torch_save",
        "checkpoint.save_consolidated": False,
        "checkpoint.dequantize_base_checkpoint": True,
    },
    "peft match_all_linear with use_triton": {
        "peft": {
            "_target_": f"{NEMO}._peft.lora.PeftConfig",
            "match_all_linear": True,
            "dim": 8,
            "alpha": 32,
            "use_triton": True,
        }
    },
    "peft target_modules as a string": {
        "peft": {"_target_": f"{NEMO}._peft.lora.PeftConfig", "target_modules": "*_proj"}
    },
    "peft target_modules ['*'] with dropout": {
        "peft": {"_target_": f"{NEMO}._peft.lora.PeftConfig", "target_modules": ["*"], "dropout": 0.0}
    },
    "peft exclude_modules only": {
        "peft": {"_target_": f"{NEMO}._peft.lora.PeftConfig", "exclude_modules": ["*lm_head*"], "use_triton": False}
    },
    "dataset.tokenizer as from_pretrained arguments": {"dataset.tokenizer": {"pretrained_model_name_or_path": "MODEL"}},
    "dataset.tokenizer as a _target_": {
        "dataset.tokenizer": {
            "_target_": "nemo_automodel._transformers.auto_tokenizer.NeMoAutoTokenizer.from_pretrained",
            "pretrained_model_name_or_path": "MODEL",
        }
    },
}


@pytest.mark.parametrize("changes", WORKS.values(), ids=WORKS.keys())
def test_reference_form_validates(changes, base, tiny_model_dir, tmp_path, capsys):
    changes = json.loads(json.dumps(changes).replace('"MODEL"', json.dumps(str(tiny_model_dir))))
    assert_valid(capsys, "llm", write(tmp_path / "cfg.yaml", changed(base, changes)))


def test_column_mapped_reference_options_validate(base, tmp_path, capsys):
    rows = [{"prompt": f"Name colour {i}.", "completion": "Blue."} for i in range(4)]
    data = tmp_path / "pc.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    dataset = {
        "_target_": f"{NEMO}.datasets.llm.column_mapped_text_instruction_dataset.ColumnMappedTextInstructionDataset",
        "path_or_dataset_id": str(data),
        "column_mapping": {"question": "prompt", "answer": "completion"},
        "seq_length": 64,
        "answer_only_loss_mask": True,
        "padding": "do_not_pad",
        "truncation": "longest_first",
    }
    cfg = changed(base, {"dataset": dataset, "validation_dataset": dict(dataset)})
    assert_valid(capsys, "llm", write(tmp_path / "cfg.yaml", cfg))
    bad = changed(cfg, {"dataset.padding": "max_length"})
    assert_refused(capsys, "llm", write(tmp_path / "bad.yaml", bad), r"dataset\.padding: 'max_length' is not one of")


def test_trust_remote_code_needs_the_users_flag(base, tmp_path, capsys):
    path = write(tmp_path / "cfg.yaml", changed(base, {"model.trust_remote_code": True}))
    assert_refused(capsys, "llm", path, r"model\.trust_remote_code: True .* pass --trust-remote-code")
    assert_valid(capsys, "llm", path, "--trust-remote-code")


def test_the_config_grammar_reads_the_reference_recipe_names(base, tmp_path, capsys):
    for recipe in ("TrainFinetuneRecipeForNextTokenPrediction", WORKS["recipe as a _target_"]["recipe"]):
        path = write(tmp_path / "cfg.yaml", changed(base, {"recipe": recipe, "compile.backend": None}))
        code, err = run_cli(capsys, str(path), "--dry-run")
        assert code == 0, err


def test_reference_spellings_are_rewritten_to_ours(base, tiny_model_dir, tmp_path):
    cfg = changed(
        base,
        {
            "compile": {"enabled": False, "backend": None},
            "distributed": {"dp_size": None, "tp_size": 1, "pp_size": 1, "ep_size": None},
            "distributed_config": {
                "_target_": f"{NEMO}.distributed.config.DDPConfig",
                "activation_checkpointing": True,
            },
            "packed_sequence": {"packed_sequence_size": 0, "packing_strategy": "thd"},
            "checkpoint.dequantize_base_checkpoint": True,
            "dataset.tokenizer": {"pretrained_model_name_or_path": str(tiny_model_dir)},
            "validation_dataset.tokenizer": {"pretrained_model_name_or_path": str(tiny_model_dir)},
        },
    )
    ours = llm_finetune.validate(load_config(write(tmp_path / "cfg.yaml", cfg))).to_dict()
    assert ours["distributed"] == {"dp_size": None, "tp_size": 1, "strategy": "ddp", "activation_checkpointing": True}
    assert "distributed_config" not in ours and ours["compile"] == {"enabled": False}
    assert (
        ours["packed_sequence"] == {"packed_sequence_size": 0}
        and "dequantize_base_checkpoint" not in ours["checkpoint"]
    )
    assert ours["tokenizer"] == {"pretrained_model_name_or_path": str(tiny_model_dir)}
    assert "tokenizer" not in ours["dataset"] and "tokenizer" not in ours["validation_dataset"]


def test_a_model_built_from_a_repository_config_takes_its_tokenizer_from_there(base, tiny_model_dir, tmp_path, capsys):
    model = {
        "_target_": "nemo_automodel.NeMoAutoModelForCausalLM.from_config",
        "config": {"_target_": "transformers.AutoConfig.from_pretrained", "pretrained_model_name_or_path": "MODEL"},
    }
    cfg = json.loads(json.dumps(changed(base, {"model": model})).replace('"MODEL"', json.dumps(str(tiny_model_dir))))
    path = write(tmp_path / "cfg.yaml", cfg)
    assert_valid(capsys, "llm", path)
    assert llm_finetune.validate(load_config(path)).tokenizer.to_dict() == {
        "pretrained_model_name_or_path": str(tiny_model_dir)
    }


# --- forms that are refused, one line naming the key ------------------------------------------------------------------
REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "HellaSwag dataset (issue #14)": (
        {"dataset": {"_target_": f"{NEMO}.datasets.llm.hellaswag.HellaSwag", "path_or_dataset": "rowan/hellaswag"}},
        r"dataset\._target_: .*HellaSwag.* no counterpart here yet",
    ),
    "ChatDataset (issue #14)": (
        {"dataset": {"_target_": f"{NEMO}.datasets.llm.chat_dataset.ChatDataset", "path_or_dataset_id": "x.jsonl"}},
        r"dataset\._target_: .*ChatDataset.* did you mean .*make_chat_dataset",
    ),
    "tool-calling chat dataset": (
        {"dataset": {"_target_": f"{NEMO}.datasets.llm.tool_calling_chat_dataset.ToolCallingChatDataset"}},
        r"dataset\._target_: .*ToolCallingChatDataset.* no counterpart",
    ),
    "xLAM dataset": (
        {"dataset": {"_target_": f"{NEMO}.datasets.llm.xlam.make_xlam_dataset"}},
        r"dataset\._target_: .*make_xlam_dataset.* no counterpart",
    ),
    "mock iterable dataset with a torch DataLoader": (
        {
            "dataset": {"_target_": f"{NEMO}.datasets.llm.mock_iterable_dataset.MockIterableDataset"},
            "dataloader": {"_target_": "torch.utils.data.DataLoader"},
        },
        r"dataset\._target_: .*MockIterableDataset.* no counterpart",
    ),
    "ci metadata (issue #14)": (
        {"ci": {"recipe_owner": "someone", "time": "00:10:00", "checkpoint_robustness": {"hf_kl_threshold": 0.01}}},
        r"ci: the reference system's CI metadata is not read here; remove the section",
    ),
    "fp8 section": (
        {"fp8": {"enabled": True, "recipe_name": "tensorwise", "filter_fqns": ["lm_head"], "emulate": False}},
        r"fp8: FP8 training .* not supported yet",
    ),
    "qat section with a torchao quantizer": (
        {
            "qat": {
                "enabled": True,
                "quantizer": {"_target_": "torchao.quantization.qat.Int8DynActInt4WeightQATQuantizer"},
            }
        },
        r"qat: quantization-aware training is not supported yet",
    ),
    "qat section with a QATConfig": (
        {"qat": {"qat_config": {"_target_": f"{NEMO}.quantization.qat.QATConfig"}}},
        r"qat: quantization-aware training",
    ),
    "quantization (QLoRA) section": (
        {"quantization": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}},
        r"quantization: QLoRA .* not supported yet",
    ),
    "MoE parallelizer": (
        {"parallelizer": {"_target_": f"{NEMO}.moe.parallelizer.parallelize_model"}},
        r"parallelizer: custom parallelizers",
    ),
    "autopipeline": (
        {"autopipeline": {"_target_": f"{NEMO}.distributed.pipelining.AutoPipeline", "pp_schedule": "1f1b"}},
        r"autopipeline: pipeline parallelism is not supported yet",
    ),
    "distributed.pp_size > 1 (issue #14)": (
        {"distributed": {"strategy": "fsdp2", "pp_size": 2}},
        r"distributed\.pp_size: pipeline parallelism is not supported yet; remove it or set 1",
    ),
    "distributed.ep_size > 1 (issue #14)": (
        {"distributed": {"strategy": "fsdp2", "ep_size": 8}},
        r"distributed\.ep_size: expert parallelism \(MoE\) is not supported yet; remove it or set 1",
    ),
    "distributed.pipeline block": (
        {"distributed": {"strategy": "fsdp2", "pipeline": {"pp_schedule": "1f1b", "pp_microbatch_size": 1}}},
        r"distributed\.pipeline: pipeline parallelism",
    ),
    "distributed.moe block": (
        {"distributed": {"strategy": "fsdp2", "moe": {"reshard_after_forward": False}}},
        r"distributed\.moe: expert parallelism",
    ),
    "distributed.mp_policy": (
        {"distributed.mp_policy": {"_target_": "torch.distributed.fsdp.MixedPrecisionPolicy"}},
        r"distributed\.mp_policy: .* set distributed\.param_dtype / reduce_dtype",
    ),
    "distributed_config key we lack": (
        {"distributed_config": {"_target_": f"{NEMO}.distributed.config.FSDP2Config", "defer_fsdp_grad_sync": True}},
        r"distributed_config\.defer_fsdp_grad_sync: not supported here",
    ),
    "distributed_config against distributed.strategy": (
        {
            "distributed": {"strategy": "ddp"},
            "distributed_config": {"_target_": f"{NEMO}.distributed.config.FSDP2Config"},
        },
        r"distributed_config\._target_: FSDP2Config means strategy fsdp2, but distributed\.strategy is 'ddp'",
    ),
    "model.backend BackendConfig (issue #14)": (
        {"model.backend": {"_target_": f"{NEMO}.models.common.BackendConfig", "rms_norm": "torch_fp32"}},
        r"model\.backend: the reference system's custom model backends .* not supported yet",
    ),
    "model.backend as a plain mapping": (
        {"model.backend": {"dispatcher": "uccl_ep"}},
        r"model\.backend: the reference system's custom model backends",
    ),
    "hub attention kernels": (
        {"model.attn_implementation": "kernels-community/flash-attn2"},
        r"model\.attn_implementation: .* --trust-remote-code",
    ),
    "neat packing": (
        {
            "packed_sequence": {"packed_sequence_size": 256, "packing_strategy": "neat"},
            "dataloader.collate_fn": f"{NEMO}.datasets.utils.neat_packed_collater",
        },
        r"packed_sequence\.packing_strategy: only the default packing",
    ),
    "neat packing's drop_long_samples": (
        {"packed_sequence": {"packed_sequence_size": 256, "drop_long_samples": False}},
        r"packed_sequence\.drop_long_samples: not supported; remove it \(packed_sequence\.on_overflow",
    ),
    "validation_dataloader.batch_size other than local_batch_size": (
        {"validation_dataloader.batch_size": 8},
        r"validation_dataloader\.batch_size: the recipe supplies 'batch_size' itself from "
        r"step_scheduler\.local_batch_size \(1\)",
    ),
    "checkpoint.dequantize_base_checkpoint false": (
        {"checkpoint.dequantize_base_checkpoint": False},
        r"checkpoint\.dequantize_base_checkpoint: .* remove it or set true",
    ),
    "a third-party optimizer (flashoptim)": (
        {"optimizer": {"_target_": "flashoptim.FlashAdamW", "lr": 1e-5}},
        r"optimizer\._target_: 'flashoptim\.FlashAdamW' is not in the allowlist .* --allow-target",
    ),
    "the reference system's Muon config": (
        {"optimizer": {"_target_": f"{NEMO}.optim.optimizer.MuownConfig"}},
        r"optimizer\._target_: .*MuownConfig.* no counterpart",
    ),
    "TE parallel cross-entropy": (
        {"loss_fn": {"_target_": f"{NEMO}.loss.te_parallel_ce.TEParallelCrossEntropy"}},
        r"loss_fn\._target_: .*TEParallelCrossEntropy.* no counterpart",
    ),
    "MLflow logger": ({"mlflow": {"experiment_name": "x"}}, r"mlflow: MLflow logging is not supported yet"),
    "SkyPilot launcher": ({"skypilot": {"cloud": "kubernetes"}}, r"skypilot: .* use a slurm: or k8s: section"),
    "dataset.tokenizer differing from validation_dataset.tokenizer": (
        {
            "dataset.tokenizer": {"pretrained_model_name_or_path": "a"},
            "validation_dataset.tokenizer": {"pretrained_model_name_or_path": "b"},
        },
        r"validation_dataset\.tokenizer: differs from dataset\.tokenizer",
    ),
}


@pytest.mark.parametrize(("changes", "match"), REFUSED.values(), ids=REFUSED.keys())
def test_unsupported_reference_form_is_one_clear_error(changes, match, base, tmp_path, capsys):
    assert_refused(capsys, "llm", write(tmp_path / "cfg.yaml", changed(base, changes)), match)


def test_a_duplicate_key_is_a_yaml_error_naming_it(base, tmp_path, capsys):
    # Two reference examples repeat a key in one mapping (PyYAML keeps the last one silently).
    text = yaml.safe_dump(base, sort_keys=False) + "ci:\n  no_check_resume: true\n  no_check_resume: true\n"
    assert_refused(capsys, "llm", write(tmp_path / "cfg.yaml", text), r"duplicate key 'no_check_resume'")


def test_every_refusal_of_a_file_is_reported_at_once(base, tmp_path, capsys):
    cfg = changed(base, {"fp8": {"enabled": True}, "ci": {"time": "1"}, "distributed": {"pp_size": 4}})
    message = assert_refused(capsys, "llm", write(tmp_path / "cfg.yaml", cfg), r"3 problem\(s\)")
    assert all(key in message for key in ("fp8:", "ci:", "distributed.pp_size:")), message
    assert "unknown" not in message  # the refusal replaces the generic unknown-section/key line


# --- VLM --------------------------------------------------------------------------------------------------------------
@pytest.fixture()
def vlm_base(tiny_qwen_vl_dir: Path, shapes_data: Path, tmp_path: Path) -> dict[str, Any]:
    return vlm_config(tiny_qwen_vl_dir, shapes_data, tmp_path / "ckpt")


VLM_WORKS: dict[str, dict[str, Any]] = {
    "the Qwen2.5-VL example shape": {},
    "peft excluding the vision modules": {
        "peft": {
            "_target_": f"{NEMO}._peft.lora.PeftConfig",
            "match_all_linear": False,
            "exclude_modules": ["*vision_tower*", "*visual*", "*lm_head*"],
            "dim": 8,
            "alpha": 32,
            "use_triton": True,
        }
    },
    "strategy megatron_fsdp": {
        "distributed": {"strategy": "megatron_fsdp", "dp_size": None},
        "distributed_config": DROP,
    },
    "default collate as a section": {
        "dataloader.collate_fn": {"_target_": f"{NEMO}.datasets.vlm.collate_fns.default_collate_fn"},
        "validation_dataloader.collate_fn": {"_target_": f"{NEMO}.datasets.vlm.collate_fns.default_collate_fn"},
    },
}
VLM_REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "a dataset we do not have": (
        {"dataset": {"_target_": f"{NEMO}.datasets.vlm.datasets.make_shopify_product_catalogue_dataset"}},
        r"dataset\._target_: .*make_shopify_product_catalogue_dataset.* no counterpart",
    ),
    "a family collate we do not have": (
        {"dataloader.collate_fn": {"_target_": f"{NEMO}.datasets.vlm.collate_fns.kimi_vl_collate_fn"}},
        r"dataloader\.collate_fn\._target_: .*kimi_vl_collate_fn.* no counterpart",
    ),
    "moe_config section": (
        {"moe_config": {"_target_": f"{NEMO}.moe.config.MoEParallelizerConfig"}},
        r"moe_config: expert parallelism",
    ),
    "trust_remote_code without the flag": (
        {"model.trust_remote_code": True},
        r"model\.trust_remote_code: True .* --trust-remote-code",
    ),
    "ci metadata": ({"ci": {"recipe_owner": "someone", "nodes": 1}}, r"ci: the reference system's CI metadata"),
}


@pytest.mark.parametrize("changes", VLM_WORKS.values(), ids=VLM_WORKS.keys())
def test_vlm_reference_form_validates(changes, vlm_base, tmp_path, capsys):
    assert_valid(capsys, "vlm", write(tmp_path / "cfg.yaml", changed(vlm_base, changes)))


@pytest.mark.parametrize(("changes", "match"), VLM_REFUSED.values(), ids=VLM_REFUSED.keys())
def test_vlm_unsupported_reference_form_is_one_clear_error(changes, match, vlm_base, tmp_path, capsys):
    assert_refused(capsys, "vlm", write(tmp_path / "cfg.yaml", changed(vlm_base, changes)), match)


# --- short runs of the accepted forms ---------------------------------------------------------------------------------
def test_reference_shaped_full_finetune_runs(base, tmp_path):
    cfg = changed(
        base,
        {
            "recipe": "TrainFinetuneRecipeForNextTokenPrediction",
            "dist_env": {"backend": "nccl", "timeout_minutes": 1},
            "model.torch_dtype": "float32",
            "model.use_liger_kernel": False,
            "compile": {"enabled": False, "mode": "default", "fullgraph": False, "dynamic": True, "backend": None},
            "clip_grad_norm": {"max_norm": 1.0},
            "distributed": {"dp_size": "none", "tp_size": 1, "cp_size": 1},
            "distributed_config": {"_target_": f"{NEMO}.distributed.config.FSDP2Config", "sequence_parallel": False},
            "packed_sequence": {"packed_sequence_size": 0},
            "dataloader.collate_fn": {"_target_": SQUAD_COLLATE, "pad_seq_len_divisible": 16},
            "dataloader.shuffle": False,
            "optimizer": {
                "_target_": "torch.optim.Adam",
                "betas": [0.9, 0.999],
                "eps": 1e-8,
                "lr": 1e-4,
                "weight_decay": 0,
            },
            "lr_scheduler": {"lr_decay_style": "cosine", "min_lr": 1.0e-6},
            "checkpoint": {
                "enabled": True,
                "checkpoint_dir": str(tmp_path / "ckpt"),
                "model_save_format": "safetensors",
                "save_consolidated": True,
                "dequantize_base_checkpoint": True,
            },
        },
    )
    summary = llm_finetune.main(load_config(write(tmp_path / "cfg.yaml", cfg)))
    assert sorted(summary["train_losses"]) == [1, 2] and summary["val_loss_after"] is not None
    # The checkpoint keeps the config in our spelling: it validates and reloads without the reference forms.
    saved = load_config(Path(summary["checkpoint"]) / "config.yaml")
    assert (
        saved.distributed.strategy == "fsdp2" and "distributed_config" not in saved and "backend" not in saved.compile
    )
    llm_finetune.validate(saved)


def test_reference_shaped_lora_with_packing_runs(base, tiny_model_dir, tmp_path, caplog):
    cfg = changed(
        base,
        {
            "peft": {
                "_target_": f"{NEMO}._peft.lora.PeftConfig",
                "match_all_linear": True,
                "dim": 4,
                "alpha": 8,
                "use_triton": True,
            },
            "distributed": {
                "_target_": f"{NEMO}.distributed.fsdp2.FSDP2Manager",
                "dp_size": None,
                "tp_size": 1,
                "cp_size": 1,
                "pp_size": 1,
                "ep_size": None,
            },
            "dataset.tokenizer": {"pretrained_model_name_or_path": str(tiny_model_dir)},
            "packed_sequence": {"packed_sequence_size": 256, "packing_strategy": "thd"},
            "dataloader.collate_fn": f"{NEMO}.datasets.utils.packed_sequence_thd_collater",
            "validation_dataloader.collate_fn": f"{NEMO}.datasets.utils.packed_sequence_thd_collater",
        },
    )
    with caplog.at_level(logging.WARNING, logger="automodel"):
        summary = llm_finetune.main(load_config(write(tmp_path / "cfg.yaml", cfg)))
    assert sorted(summary["train_losses"]) == [1, 2]
    trainable = [name for name, p in summary["model"].named_parameters() if p.requires_grad]
    assert trainable and all("lora" in name for name in trainable)
    assert "peft.use_triton is ignored" in caplog.text


def test_reference_shaped_qwen2_5_vl_runs(vlm_base, tmp_path):
    summary = vlm_finetune.main(load_config(write(tmp_path / "cfg.yaml", vlm_base)))
    assert sorted(summary["train_losses"]) == [1, 2] and summary["val_loss_after"] is not None
    trainable = {name.split(".")[1] for name, p in summary["model"].named_parameters() if p.requires_grad}
    assert "visual" not in trainable  # freeze_config: the vision tower stays frozen
