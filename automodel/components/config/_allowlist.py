"""The reviewed list of callables a config may name without an opt-in (`_target_:` values and `*_fn:` keys).

Security review lives here, in one place (docs/security.md explains the threat model). The rules for an entry:
- it *builds* something a training run is made of: a model, tokenizer or processor loader, a model config, a dataset
  builder, a collate function, a loss, an optimizer, an LR scheduler, a dataloader, or one of our config classes;
- it is named exactly (no package trees: `torch.optim.AdamW` is listed, `torch.optim` is not);
- called with any arguments a YAML file can express (numbers, strings, lists, mappings, other listed callables), it
  neither runs code from a file nor unpickles one, and it writes no file at a path the config chooses. The keyword
  arguments that would break this on the listed loaders (`trust_remote_code: true`, `weights_only: false`, ...) are
  refused wherever they appear (see `CODE_LOADING_KEYS`); `tests/security/test_allowlist_audit.py`
  calls every entry with hostile arguments under a Python audit hook to check all of it.

Anything else needs the user's explicit `--allow-target NAME` (or `AUTOMODEL_ALLOWED_TARGETS=NAME`): a YAML file is
not a licence to run code. Reference-system names (`nemo_automodel.X`) are mapped to `automodel.X` first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

# Categories: what an entry builds. The audit test picks its hostile arguments per category.
MODEL = "model"
MODEL_CONFIG = "model_config"
TOKENIZER = "tokenizer"
PROCESSOR = "processor"
DATASET = "dataset"
COLLATE = "collate"
LOSS = "loss"
OPTIMIZER = "optimizer"
LR_SCHEDULER = "lr_scheduler"
DATALOADER = "dataloader"
CONFIG_CLASS = "config_class"  # a plain config dataclass of ours (validation may construct it to check values)

_C = "automodel.components"


def _entries(category: str, *names: str) -> dict[str, str]:
    return dict.fromkeys(names, category)


_ALLOWED: dict[str, str] = {
    # --- models: our loaders (hub id, local folder, GGUF) and transformers' auto classes ----------------------------
    **_entries(
        MODEL,
        "automodel.NeMoAutoModelForCausalLM.from_pretrained",
        "automodel.NeMoAutoModelForCausalLM.from_config",
        "automodel.NeMoAutoModelForImageTextToText.from_pretrained",
        "automodel.NeMoAutoModelForImageTextToText.from_config",
        "transformers.AutoModelForCausalLM.from_pretrained",
        "transformers.AutoModelForCausalLM.from_config",
        "transformers.AutoModelForImageTextToText.from_pretrained",
        "transformers.AutoModelForImageTextToText.from_config",
    ),
    # --- model configs (for from_config: pretraining, tiny test models) ---------------------------------------------
    **_entries(
        MODEL_CONFIG,
        "transformers.AutoConfig.from_pretrained",
        "transformers.AutoConfig.for_model",
        "transformers.LlamaConfig",
        "transformers.MistralConfig",
        "transformers.Qwen2Config",
        "transformers.Qwen3Config",
        "transformers.GemmaConfig",
        "transformers.Gemma2Config",
        "transformers.Gemma3TextConfig",
        "transformers.PhiConfig",
        "transformers.Phi3Config",
        "transformers.GPT2Config",
        "transformers.MixtralConfig",
        "transformers.Qwen3MoeConfig",
        "transformers.DeepseekV3Config",
        "transformers.BitsAndBytesConfig",
        "transformers.FineGrainedFP8Config",
    ),
    # --- tokenizers and processors ------------------------------------------------------------------------------------
    **_entries(
        TOKENIZER,
        "automodel.NeMoAutoTokenizer.from_pretrained",
        "transformers.AutoTokenizer.from_pretrained",
    ),
    **_entries(
        PROCESSOR,
        "automodel.NeMoAutoProcessor.from_pretrained",
    ),
    # --- datasets: our builders read data files (json/jsonl/parquet/csv, images) or Hub datasets, never code -----------
    **_entries(
        DATASET,
        f"{_C}.datasets.llm.squad.make_squad_dataset",
        f"{_C}.datasets.llm.column_mapped_text_instruction_dataset.ColumnMappedTextInstructionDataset",
        f"{_C}.datasets.llm.chat.make_chat_dataset",
        f"{_C}.datasets.llm.synthetic.make_synthetic_dataset",
        f"{_C}.datasets.vlm.datasets.make_conversation_dataset",
        f"{_C}.datasets.vlm.datasets.make_image_qa_dataset",
        f"{_C}.datasets.vlm.datasets.make_medpix_dataset",
        f"{_C}.datasets.vlm.datasets.make_rdr_dataset",
        f"{_C}.datasets.vlm.datasets.make_cord_v2_dataset",
    ),
    **_entries(
        COLLATE,
        f"{_C}.datasets.utils.default_collater",
        f"{_C}.datasets.packing.packed_collater",
        f"{_C}.datasets.vlm.collate_fns.default_collate_fn",
        "torch.utils.data.default_collate",
    ),
    # --- losses, optimizers, schedules, dataloaders --------------------------------------------------------------------
    **_entries(
        LOSS,
        f"{_C}.loss.masked_ce.MaskedCrossEntropy",
        f"{_C}.loss.linear_ce.FusedLinearCrossEntropy",
    ),
    **_entries(
        OPTIMIZER,
        f"{_C}.optim.builders.build_optimizer",
        f"{_C}.optim.muon.Muon",
        f"{_C}.optim.soap.SOAP",
        *(
            f"torch.optim.{name}"
            for name in (
                "SGD",
                "Adam",
                "AdamW",
                "Adamax",
                "Adagrad",
                "Adadelta",
                "Adafactor",
                "ASGD",
                "NAdam",
                "RAdam",
                "RMSprop",
                "Rprop",
            )
        ),
    ),
    **_entries(
        LR_SCHEDULER,
        f"{_C}.optim.builders.build_lr_scheduler",
        f"{_C}.optim.scheduler.OptimizerParamScheduler",
    ),
    **_entries(
        DATALOADER,
        "torchdata.stateful_dataloader.StatefulDataLoader",
        "torch.utils.data.DataLoader",
    ),
    # --- our config classes (plain dataclasses: validation constructs them to run their value checks) -----------------
    **_entries(
        CONFIG_CLASS,
        f"{_C}._peft.lora.PeftConfig",
        f"{_C}.training.rng.StatefulRNG",
        f"{_C}.distributed.fsdp2.FSDP2Manager",
        f"{_C}.distributed.megatron_fsdp.MegatronFSDPManager",
        f"{_C}.distributed.config.DistributedConfig",
        f"{_C}.distributed.config.DistEnvConfig",
        f"{_C}.distributed.config.CompileConfig",
        f"{_C}.datasets.packing.PackedSequenceConfig",
        f"{_C}.checkpoint.config.CheckpointConfig",
        f"{_C}.training.precision.MixedPrecisionConfig",
        f"{_C}.training.step_scheduler.StepScheduler",
        f"{_C}._transformers.FreezeConfig",
        f"{_C}.loggers.build.LoggingConfig",
        "torch.distributed.fsdp.MixedPrecisionPolicy",
        f"{_C}.training.precision.ClipGradNormConfig",
    ),
}

# Other spellings of a listed callable (package re-exports, the reference system's module paths) -> the listed name.
_ALIASES: dict[str, str] = {
    "automodel.components._transformers.NeMoAutoModelForCausalLM.from_pretrained": (
        "automodel.NeMoAutoModelForCausalLM.from_pretrained"
    ),
    "automodel.components._transformers.NeMoAutoModelForCausalLM.from_config": (
        "automodel.NeMoAutoModelForCausalLM.from_config"
    ),
    "automodel.components._transformers.NeMoAutoModelForImageTextToText.from_pretrained": (
        "automodel.NeMoAutoModelForImageTextToText.from_pretrained"
    ),
    "automodel.components._transformers.NeMoAutoModelForImageTextToText.from_config": (
        "automodel.NeMoAutoModelForImageTextToText.from_config"
    ),
    "automodel.components._transformers.NeMoAutoTokenizer.from_pretrained": (
        "automodel.NeMoAutoTokenizer.from_pretrained"
    ),
    "automodel.components._transformers.NeMoAutoProcessor.from_pretrained": (
        "automodel.NeMoAutoProcessor.from_pretrained"
    ),
    "automodel.components.datasets.make_squad_dataset": f"{_C}.datasets.llm.squad.make_squad_dataset",
    "automodel.components.datasets.make_chat_dataset": f"{_C}.datasets.llm.chat.make_chat_dataset",
    "automodel.components.datasets.ColumnMappedTextInstructionDataset": (
        f"{_C}.datasets.llm.column_mapped_text_instruction_dataset.ColumnMappedTextInstructionDataset"
    ),
    "automodel.components.datasets.default_collater": f"{_C}.datasets.utils.default_collater",
    "automodel.components.datasets.packed_collater": f"{_C}.datasets.packing.packed_collater",
    "automodel.components.datasets.PackedSequenceConfig": f"{_C}.datasets.packing.PackedSequenceConfig",
    "automodel.components.datasets.vlm.make_conversation_dataset": f"{_C}.datasets.vlm.datasets.make_conversation_dataset",
    "automodel.components.datasets.vlm.default_collate_fn": f"{_C}.datasets.vlm.collate_fns.default_collate_fn",
    "automodel.components.loss.MaskedCrossEntropy": f"{_C}.loss.masked_ce.MaskedCrossEntropy",
    "automodel.components.loss.FusedLinearCrossEntropy": f"{_C}.loss.linear_ce.FusedLinearCrossEntropy",
    "automodel.components.optim.build_optimizer": f"{_C}.optim.builders.build_optimizer",
    "automodel.components.optim.build_lr_scheduler": f"{_C}.optim.builders.build_lr_scheduler",
    "automodel.components.optim.Muon": f"{_C}.optim.muon.Muon",
    "automodel.components.optim.SOAP": f"{_C}.optim.soap.SOAP",
    "automodel.components.optim.OptimizerParamScheduler": f"{_C}.optim.scheduler.OptimizerParamScheduler",
    "automodel.components._peft.PeftConfig": f"{_C}._peft.lora.PeftConfig",
    "automodel.components.training.StatefulRNG": f"{_C}.training.rng.StatefulRNG",
    "automodel.components.distributed.FSDP2Manager": f"{_C}.distributed.fsdp2.FSDP2Manager",
    "automodel.components.distributed.MegatronFSDPManager": f"{_C}.distributed.megatron_fsdp.MegatronFSDPManager",
    # the reference system's other module paths for the same objects
    "automodel._transformers.auto_tokenizer.NeMoAutoTokenizer.from_pretrained": (
        "automodel.NeMoAutoTokenizer.from_pretrained"
    ),
    # the reference system's VLM configs name transformers' loader: ours builds the same processor, with an
    # images-only fallback where the video processor cannot be built (no torchvision) instead of an ImportError
    "transformers.AutoProcessor.from_pretrained": "automodel.NeMoAutoProcessor.from_pretrained",
    # the reference system's Qwen2.5-VL collate: our default one handles Qwen2.5-VL (tested family)
    "automodel.components.datasets.vlm.collate_fns.qwen2_5_collate_fn": (
        f"{_C}.datasets.vlm.collate_fns.default_collate_fn"
    ),
    # the reference system's collater for packed (THD) rows: ours is packed_collater
    "automodel.components.datasets.utils.packed_sequence_thd_collater": f"{_C}.datasets.packing.packed_collater",
    "automodel.components.distributed.megatronfsdp.MegatronFSDPManager": (
        f"{_C}.distributed.megatron_fsdp.MegatronFSDPManager"
    ),
    "transformers.models.qwen3_moe.configuration_qwen3_moe.Qwen3MoeConfig": "transformers.Qwen3MoeConfig",
    "transformers.models.deepseek_v3.configuration_deepseek_v3.DeepseekV3Config": "transformers.DeepseekV3Config",
    "transformers.models.llama.configuration_llama.LlamaConfig": "transformers.LlamaConfig",
    "torch.optim.adamw.AdamW": "torch.optim.AdamW",
    "torch.optim.adam.Adam": "torch.optim.Adam",
    "torch.optim.sgd.SGD": "torch.optim.SGD",
    "torch.utils.data.dataloader.DataLoader": "torch.utils.data.DataLoader",
    "torchdata.stateful_dataloader.stateful_dataloader.StatefulDataLoader": (
        "torchdata.stateful_dataloader.StatefulDataLoader"
    ),
}

ALLOWED_TARGETS: MappingProxyType[str, str] = MappingProxyType(_ALLOWED)
TARGET_ALIASES: MappingProxyType[str, str] = MappingProxyType(_ALIASES)


@dataclass(frozen=True)
class CodeLoadingKey:
    """A keyword argument of the listed loaders that makes them run code or unpickle files for some values."""

    why: str
    risky: Callable[[Any], bool]
    user_can_allow: bool  # True: accepted with the user's --trust-remote-code; False: refused outright


def _truthy(value: Any) -> bool:
    return value is not None and value is not False and value != 0


# Refused wherever they appear in a config (any section, any nesting) when `risky(value)`.
CODE_LOADING_KEYS: MappingProxyType[str, CodeLoadingKey] = MappingProxyType(
    {
        "trust_remote_code": CodeLoadingKey("runs the Python files of a model repository", _truthy, True),
        # transformers' hub kernels: compiled code downloaded from a Hub repository (needs the `kernels` package)
        "use_kernels": CodeLoadingKey("loads compiled kernels from the Hugging Face Hub", _truthy, True),
        "kernel_config": CodeLoadingKey("loads compiled kernels from the Hugging Face Hub", _truthy, True),
        "attn_implementation": CodeLoadingKey(
            "names a Hub repository of compiled attention kernels ('org/repo')",
            lambda value: isinstance(value, str) and "/" in value,
            True,
        ),
        "weights_only": CodeLoadingKey(
            "false unpickles weight files, which can run any code", lambda value: value is not None and not value, False
        ),
    }
)


def loads_from_a_repository(dotted: str) -> bool:
    """Listed loaders that read a model repository (which may ship code): built with `trust_remote_code=False` unless
    the config sets it, so transformers never asks at a terminal or decides by itself."""
    name = canonical_name(dotted)
    return ALLOWED_TARGETS.get(name) in (MODEL, MODEL_CONFIG, TOKENIZER, PROCESSOR) and name.endswith(
        (".from_pretrained", ".from_config")
    )


def canonical_name(dotted: str) -> str:
    """The listed name for `dotted` (after `nemo_automodel.` -> `automodel.` and aliases); unchanged if unlisted."""
    return TARGET_ALIASES.get(dotted, dotted)


def is_listed(dotted: str) -> bool:
    return canonical_name(dotted) in ALLOWED_TARGETS


def category(dotted: str) -> str | None:
    return ALLOWED_TARGETS.get(canonical_name(dotted))
