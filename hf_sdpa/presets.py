"""The embedded default model: Llama-style configs with GQA (random init), sized by preset. The recipes
train them; `hf-sdpa trace` runs them. Nothing is downloaded."""
import torch

PRESETS = {
    # "tiny" trains in seconds on a CPU; "small" is the CPU comparison; "100m" the GPU one.
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
    """The preset named by `embedded[:NAME]` (default: small)."""
    size = model.split(":", 1)[1] if ":" in model else "small"
    if size not in PRESETS:
        raise SystemExit(f"--model {model}: no preset {size!r}; use one of "
                         + ", ".join(f"{EMBEDDED}:{p}" for p in PRESETS))
    return PRESETS[size]


def embedded_model(model: str, attn: str, max_positions: int, seed: int = 0, vocab_size: int | None = None,
                   special_ids: dict | None = None):
    """A LlamaForCausalLM from the preset, in float32, with `attn` as its attention implementation."""
    from transformers import AutoModelForCausalLM, LlamaConfig
    torch.manual_seed(seed)
    fields = {**preset_of(model), **({"vocab_size": vocab_size} if vocab_size else {}), **(special_ids or {})}
    config = LlamaConfig(**fields, max_position_embeddings=max(max_positions, 256), tie_word_embeddings=False)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=torch.float32)
