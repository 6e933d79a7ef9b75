import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from automodel.components._peft import PeftConfig, PeftError, apply_lora, merge_adapter, save_adapter

from .conftest import VOCAB, logits, randomize_adapters, tiny_llama, tiny_qwen2

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning"),
    pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`:UserWarning"),
]


def _save_tokenizer(folder):
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0").save_pretrained(folder)


def _base_folder(tmp_path, make_model, name="base"):
    folder = tmp_path / name
    make_model().save_pretrained(folder)
    _save_tokenizer(folder)
    return folder


def _our_adapter(tmp_path, make_model, base, **kwargs):
    model = make_model()
    config = PeftConfig(dim=4, **kwargs)
    apply_lora(model, config)
    randomize_adapters(model)
    return save_adapter(model, tmp_path / "adapter", config, base_model_name_or_path=str(base))


@pytest.mark.parametrize(
    ("make_model", "kwargs"),
    [
        (tiny_llama, {"target_modules": ["*_proj"]}),
        (tiny_qwen2, {"target_modules": ["q_proj", "k_proj", "v_proj", "up_proj"], "use_dora": True}),
        (lambda: tiny_llama(tie=True), {"target_modules": ["q_proj", "lm_head"], "use_dora": True}),
    ],
    ids=["llama-lora", "qwen2-bias-dora", "tied-head-dora"],
)
def test_merged_folder_equals_peft_model(tmp_path, input_ids, make_model, kwargs):
    base = _base_folder(tmp_path, make_model)
    adapter = _our_adapter(tmp_path, make_model, base, **kwargs)
    # No base given: the adapter records its base folder.
    out = merge_adapter(None, adapter, tmp_path / "merged")
    assert out == tmp_path / "merged"

    merged = AutoModelForCausalLM.from_pretrained(out)
    expected = logits(
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter)).eval(), input_ids
    )
    assert (logits(merged.eval(), input_ids) - expected).abs().max().item() <= 1e-5
    assert not any("lora" in k for k in merged.state_dict())
    # The tokenizer files are the base folder's, byte for byte.
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (base / name).read_bytes()
    assert not list(tmp_path.glob(".merged.tmp*"))


def test_merge_peft_made_adapter_into_loaded_model(tmp_path, input_ids):
    peft_model = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=["v_proj", "gate_proj"]))
    randomize_adapters(peft_model)
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    expected = logits(peft_model.eval(), input_ids)
    tokenizer_dir = tmp_path / "tok"
    _save_tokenizer(tokenizer_dir)

    out = merge_adapter(tiny_llama(), tmp_path / "adapter", tmp_path / "merged", tokenizer_source=tokenizer_dir)
    torch.testing.assert_close(
        logits(AutoModelForCausalLM.from_pretrained(out), input_ids), expected, rtol=0, atol=1e-5
    )
    assert AutoTokenizer.from_pretrained(out)("w3 w9")["input_ids"] == [3, 9]


def test_merged_bf16_base_keeps_its_dtype(tmp_path, input_ids):
    base = tmp_path / "base"
    tiny_llama().to(torch.bfloat16).save_pretrained(base)
    adapter = _our_adapter(tmp_path, lambda: tiny_llama().to(torch.bfloat16), base, target_modules=["q_proj"])
    out = merge_adapter(base, adapter, tmp_path / "merged")
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert AutoModelForCausalLM.from_pretrained(out, dtype="auto").dtype is torch.bfloat16


def test_shape_mismatch_writes_nothing(tmp_path):
    base = _base_folder(tmp_path, tiny_llama)

    def wide_llama():
        model = tiny_llama()
        model.config.intermediate_size = 96
        return type(model)(model.config)

    adapter = _our_adapter(tmp_path, wide_llama, base, target_modules=["up_proj"])
    with pytest.raises(
        PeftError, match=r"up_proj\.lora_B\.weight has shape \(96, 4\) but the model expects \(128, 4\)"
    ):
        merge_adapter(base, adapter, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "base"]


def test_existing_output_is_refused_unless_empty(tmp_path):
    base = _base_folder(tmp_path, tiny_llama)
    adapter = _our_adapter(tmp_path, tiny_llama, base, target_modules=["q_proj"])
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(PeftError, match="already exists and is not an empty folder"):
        merge_adapter(base, adapter, taken)
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (merge_adapter(base, adapter, empty) / "model.safetensors").is_file()
