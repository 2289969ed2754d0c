"""The recipes' models: the embedded default (a Llama-style config with GQA, random init, sized by preset) or
any causal LM by hub id or path, with a given attention implementation; and the check that an implementation
can run a model before any training starts."""
import torch

import hf_sdpa  # noqa: F401  registers the names
from hf_sdpa.presets import EMBEDDED, embedded_model, is_embedded, preset_of  # noqa: F401  (the scripts use them)


def build(model: str, attn: str, tokenizer, max_positions: int, seed: int):
    """The model in float32 (mixed precision is accelerate's job), with `attn` as its implementation."""
    from transformers import AutoModelForCausalLM
    if is_embedded(model):
        ids = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                   eos_token_id=tokenizer.eos_token_id)
        return embedded_model(model, attn, max_positions, seed, vocab_size=len(tokenizer), special_ids=ids)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_pretrained(model, attn_implementation=attn, dtype=torch.float32)


def probe(model, batch: dict, device) -> None:
    """One forward and backward on a slice of a real batch, so that an implementation that cannot run this
    model stops the run before it starts (its error says why). Leaves no gradient and no RNG state behind."""
    small = {k: v[:1].to(device) for k, v in batch.items() if k != "targets"}
    devices = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        model(**small, use_cache=False).logits.float().sum().backward()
    model.zero_grad(set_to_none=True)
