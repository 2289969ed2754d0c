"""Side by side on a tiny Llama-style model (GQA, random weights): every implementation that runs here
against eager, on a left-padded batch: logits, loss, gradients, greedy generation, forward time."""
import time

import torch

from .errors import AttentionRefused
from .implementations import IMPLEMENTATIONS


def tiny_llama(device, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return LlamaForCausalLM(config).to(device=device, dtype=dtype)


def padded_labels(ids, mask):
    """Labels that leave out padding and each row's first real token (predicted from a padding position)."""
    labels = ids.masked_fill(mask == 0, -100)
    labels[torch.arange(ids.shape[0], device=ids.device), mask.argmax(1)] = -100
    return labels


def _step(model, ids, mask, labels):
    model.zero_grad()
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    grads = torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None])
    return out.logits.detach().float(), out.loss.item(), grads


def compare(device=None, dtype=torch.float32, batch=4, seq=48, new_tokens=8, repeats=5):
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = tiny_llama(device, dtype)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 256, (batch, seq), generator=gen).to(device)
    mask = torch.ones(batch, seq, dtype=torch.long, device=device)
    for row in range(1, batch):  # left padding of growing length
        mask[row, : row * seq // (2 * batch)] = 0
    labels = padded_labels(ids, mask)
    names = ["eager", "sdpa"] + list(IMPLEMENTATIONS)
    rows, ref = [], None
    for name in names:
        try:
            model.set_attn_implementation(name)
            logits, loss, grads = _step(model, ids, mask, labels)
            model.eval()
            with torch.no_grad():
                tokens = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                                        pad_token_id=0)[:, seq:]
                timings = []
                for _ in range(repeats):
                    if device == "cuda":
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    model(input_ids=ids, attention_mask=mask)
                    if device == "cuda":
                        torch.cuda.synchronize()
                    timings.append(time.perf_counter() - t0)
            model.train()
        except AttentionRefused as exc:
            rows.append({"name": name, "status": "refused", "why": str(exc).splitlines()[0]})
            continue
        if ref is None:
            ref = (logits, loss, grads, tokens)
        valid = mask.bool()
        rows.append({
            "name": name, "status": "ran",
            "max |logits - eager|": (logits - ref[0])[valid].abs().max().item(),
            "|loss - eager|": abs(loss - ref[1]),
            "max |grad - eager|": (grads - ref[2]).abs().max().item(),
            "generation == eager": bool(torch.equal(tokens, ref[3])),
            "forward ms (median)": 1e3 * sorted(timings)[len(timings) // 2],
        })
    return rows


def format_rows(rows) -> str:
    cols = ["max |logits - eager|", "|loss - eager|", "max |grad - eager|", "generation == eager",
            "forward ms (median)"]
    lines = ["| implementation | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for r in rows:
        if r["status"] != "ran":
            lines.append(f"| {r['name']} | refused: {r['why']} " + "| " * (len(cols) - 1) + "|")
            continue
        cells = [f"{r[c]:.2e}" if isinstance(r[c], float) and "ms" not in c else
                 (f"{r[c]:.2f}" if "ms" in c else str(r[c])) for c in cols]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
