"""Tiny random Llama models, a tiny byte-level BPE tokenizer, and a writer for them as a real GGUF file.

The GGUF follows llama.cpp's conventions (tensor names, q/k row permutation, `tokenizer.ggml.*` metadata), which is
what transformers' GGUF loader reads back; the tests check that the round trip is exact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

VOCAB_SIZE = 128
ROPE_THETA = 10000.0
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2: unk, bos, eos
CHAT_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
TEXT = "the cat sat on a mat\nthen the end"


def tiny_config_dict() -> dict:
    return {
        "model_type": "llama",
        "vocab_size": VOCAB_SIZE,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
        "rope_parameters": {"rope_type": "default", "rope_theta": ROPE_THETA},
        "tie_word_embeddings": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    fields = tiny_config_dict()
    fields.pop("model_type")
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**fields)).eval()


def tiny_vocab() -> tuple[list[str], list[str], list[int]]:
    """(tokens, merges, token types) of a 128-token byte-level BPE over printable ASCII and newline."""
    spell = bytes_to_unicode()
    tokens = SPECIAL_TOKENS + [spell[b] for b in [10, *range(32, 127)]]
    num_plain = len(tokens) - len(SPECIAL_TOKENS)
    merges = []
    for word in ["Ġt", "he", "Ġthe", "Ġa", "at", "Ġc", "Ġcat", "Ġs", "Ġsat", "en", "Ġthen"]:
        # Each merge joins two tokens that already exist, as BPE training would.
        left, right = next(
            (word[:i], word[i:]) for i in range(len(word) - 1, 0, -1) if {word[:i], word[i:]} <= set(tokens)
        )
        merges.append(f"{left} {right}")
        tokens.append(word)
    num_plain += len(merges)
    reserved = [f"<|reserved_{i}|>" for i in range(len(tokens), VOCAB_SIZE)]
    tokens += reserved
    types = [3] * len(SPECIAL_TOKENS) + [1] * num_plain + [3] * len(reserved)  # 1 normal, 3 control
    return tokens, merges, types


def tiny_tokenizer(pad: bool = False) -> PreTrainedTokenizerFast:
    """The same vocabulary as an HF tokenizer, with no pad token unless `pad`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tokens, merges, _ = tiny_vocab()
    bpe = models.BPE(
        vocab={t: i for i, t in enumerate(tokens)}, merges=[(m.split(" ")[0], m.split(" ")[1]) for m in merges]
    )
    backend = Tokenizer(bpe)
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>", unk_token="<|endoftext|>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    if pad:
        tokenizer.pad_token = "<|im_end|>"
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _llama_cpp_permute(weight: np.ndarray, num_heads: int) -> np.ndarray:
    # llama.cpp stores q/k rows per head as interleaved rotary pairs; transformers' loader undoes this permutation.
    return (
        weight.reshape(num_heads, 2, weight.shape[0] // num_heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def write_tiny_gguf(path: Path, model: LlamaForCausalLM) -> Path:
    """Write `model` (a tiny Llama) and the tiny tokenizer as an F32 GGUF file."""
    import gguf

    # Plain ints from the dict (the model's config types them as optional); the round-trip test checks they match.
    cfg = tiny_config_dict()
    num_heads, num_kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    assert model.config.hidden_size == cfg["hidden_size"], "write_tiny_gguf expects a model from tiny_llama()"
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    tokens, merges, types = tiny_vocab()
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(num_heads)
    writer.add_head_count_kv(num_kv_heads)
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_rope_freq_base(ROPE_THETA)
    writer.add_rope_dimension_count(cfg["hidden_size"] // num_heads)
    writer.add_vocab_size(cfg["vocab_size"])
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    # Tied embeddings: like llama.cpp, no `output.weight`.
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    names = {"attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj"}
    names |= {"ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    names |= {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
    for i in range(cfg["num_hidden_layers"]):
        hf = f"model.layers.{i}."
        writer.add_tensor(
            f"blk.{i}.attn_q.weight", _llama_cpp_permute(state[hf + "self_attn.q_proj.weight"], num_heads)
        )
        writer.add_tensor(
            f"blk.{i}.attn_k.weight",
            _llama_cpp_permute(state[hf + "self_attn.k_proj.weight"], num_kv_heads),
        )
        for gguf_name, hf_name in names.items():
            writer.add_tensor(f"blk.{i}.{gguf_name}.weight", state[f"{hf}{hf_name}.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def logits(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids).logits
