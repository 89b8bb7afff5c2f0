"""Builds small random-initialised Llama checkpoints locally (no hub access).

The tokenizer is a word-level vocabulary ``<unk> <s> </s> <pad> w0 w1 ...`` split on
whitespace, so prompts can be given as token ids directly.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class TinyLlama:
    vocab_size: int = 512
    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 32
    max_position_embeddings: int = 4096
    seed: int = 0


def build_tiny_llama(directory: str | Path, spec: TinyLlama = TinyLlama(), dtype: str = "float32") -> Path:
    """Writes config, safetensors weights and tokenizer for `spec` into `directory` (idempotent)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    directory = Path(directory)
    marker = directory / "thaw-tiny.json"
    wanted = {**asdict(spec), "dtype": dtype}
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    cfg = LlamaConfig(
        vocab_size=spec.vocab_size, hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size, num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads, num_key_value_heads=spec.num_key_value_heads,
        head_dim=spec.head_dim, max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=1, eos_token_id=2, pad_token_id=3, tie_word_embeddings=False,
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(cfg).to(getattr(torch, dtype))
    model.save_pretrained(directory, safe_serialization=True)
    words = ["<unk>", "<s>", "</s>", "<pad>"] + [f"w{i}" for i in range(spec.vocab_size - 4)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>", pad_token="<pad>").save_pretrained(directory)
    marker.write_text(json.dumps(wanted))
    return directory
