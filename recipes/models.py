"""The recipes' models: the embedded default (a Llama-style config with GQA, random init, sized by preset) or
any causal LM by hub id or path, with a given attention implementation; and the check that an implementation
can run a model before any training starts."""
import torch

import hf_sdpa  # noqa: F401  registers the names

# Llama-style, GQA 2:1 or 4:1. "tiny" trains in seconds on a CPU; "100m" is the GPU comparison.
PRESETS = {
    "tiny": dict(hidden_size=128, intermediate_size=352, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=2048),
    "small": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=2, vocab_size=4096),
    "100m": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=8,
                 num_key_value_heads=2, vocab_size=8192),
}
EMBEDDED = "embedded"


def is_embedded(model: str) -> bool:
    return model == EMBEDDED or model.startswith(EMBEDDED + ":")


def preset_of(model: str) -> dict:
    size = model.split(":", 1)[1] if ":" in model else "small"
    if size not in PRESETS:
        raise SystemExit(f"--model {model}: no preset {size!r}; use one of "
                         + ", ".join(f"{EMBEDDED}:{p}" for p in PRESETS))
    return PRESETS[size]


def build(model: str, attn: str, tokenizer, max_positions: int, seed: int):
    """The model in float32 (mixed precision is accelerate's job), with `attn` as its implementation."""
    from transformers import AutoModelForCausalLM, LlamaConfig
    torch.manual_seed(seed)
    if is_embedded(model):
        config = LlamaConfig(**{**preset_of(model), "vocab_size": len(tokenizer)},
                             max_position_embeddings=max(max_positions, 256), pad_token_id=tokenizer.pad_token_id,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                             tie_word_embeddings=False)
        return AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=torch.float32)
    return AutoModelForCausalLM.from_pretrained(model, attn_implementation=attn, dtype=torch.float32)


def probe(model, batch: dict, device) -> None:
    """One forward and backward on a slice of a real batch, so that an implementation that cannot run this
    model stops the run before it starts (its error says why). Leaves no gradient and no RNG state behind."""
    small = {k: v[:1].to(device) for k, v in batch.items() if k != "targets"}
    devices = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        model(**small).logits.float().sum().backward()
    model.zero_grad(set_to_none=True)
