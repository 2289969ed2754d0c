"""Evaluate one model with several attention implementations on the same held-out batches: perplexity, the
largest and mean logit difference and the KL divergence against `eager`, greedy generation of a fixed prompt
set with left padding (do the tokens match `eager`?), forward tokens/s and peak memory.

    python recipes/evaluate.py --model runs/eager/model --attn all
    accelerate launch recipes/evaluate.py --model HUB_ID --dataset wikitext --attn sdpa,triton_attention

Writes OUTPUT_DIR/evaluation.json and prints a table.
"""
import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import hf_sdpa

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus  # noqa: E402
import finetune  # noqa: E402
import measure  # noqa: E402


def add_evaluation_options(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--eval-batches", type=int, default=4, help="held-out batches (of --batch-size rows)")
    p.add_argument("--eval-repeats", type=int, default=3, help="timed forward passes over them (median)")
    p.add_argument("--prompts", type=int, default=8, help="greedy generation prompts, left padded")
    p.add_argument("--new-tokens", type=int, default=24)
    return p


def held_out_batches(data, args) -> list:
    """The held-out documents as training saw its rows: packed (--packing) or one per row, right padded."""
    tok = data.tokenizer
    rows = corpus.rows_from_docs(data.validation, args.seq_len, data.bos, tok.eos_token_id, packing=args.packing)
    rows = rows[:args.eval_batches * args.batch_size]
    if not rows:
        raise corpus.DataError("the held-out split gave no rows; give more text or lower --seq-len.")
    return [corpus.collate(rows[i:i + args.batch_size], tok.pad_token_id)
            for i in range(0, len(rows), args.batch_size)]


def prompt_batch(data, count: int) -> dict:
    """`count` prompts of growing length (the first 3, 6, 9, ... words of held-out documents), left padded."""
    texts = [t for t in data.validation_texts if len(t.split()) >= 3 * count][:count]
    prompts = [" ".join(t.split()[:3 * (i + 1)]) for i, t in enumerate(texts)]
    enc = data.tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    return {"prompts": prompts, "input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def _forward(model, batch, acc):
    inputs = {k: v.to(acc.device) for k, v in batch.items() if k != "targets"}
    with torch.no_grad(), acc.autocast():
        return model(**inputs, use_cache=False).logits[:, :-1].float()


def perplexity(model, batches, acc) -> float:
    """exp(mean cross-entropy over every real next token of `batches`)."""
    total, count = 0.0, 0
    for batch in batches:
        targets = batch["targets"].to(acc.device)
        total += F.cross_entropy(_forward(model, batch, acc).flatten(0, 1), targets.flatten(), ignore_index=-100,
                                 reduction="sum").item()
        count += int((targets != -100).sum())
    return math.exp(total / count)


def _generate(model, prompts, new_tokens, pad_id, acc):
    with torch.no_grad(), acc.autocast():
        out = model.generate(input_ids=prompts["input_ids"].to(acc.device),
                             attention_mask=prompts["attention_mask"].to(acc.device), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad_id)
    return out[:, prompts["input_ids"].shape[1]:].cpu()


def evaluate(model_dir, names, data, args, acc) -> dict:
    """Every name on the same weights and batches; `eager` (run first) is the reference."""
    from transformers import AutoModelForCausalLM
    names = ["eager"] + [n for n in names if n != "eager"]
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager", dtype=torch.float32)
    model.to(acc.device).eval()
    batches = held_out_batches(data, args)
    prompts = prompt_batch(data, args.prompts)
    reference, rows = None, []
    for name in names:
        try:
            model.set_attn_implementation(name)
            logits = [_forward(model, b, acc).cpu() for b in batches]  # also the warm-up
            with hf_sdpa.trace() as traced:
                tokens = _generate(model, prompts, args.new_tokens, data.tokenizer.pad_token_id, acc)
        except (ValueError, RuntimeError, NotImplementedError) as exc:  # AttentionRefused is a ValueError
            rows.append({"name": name, "status": "refused", "why": " ".join(str(exc).split())})
            continue
        measure.reset_peak(acc.device)
        times = []
        for _ in range(args.eval_repeats):
            t0 = measure.now(acc.device)
            for b in batches:
                _forward(model, b, acc)
            times.append(measure.now(acc.device) - t0)
        real = sum(int(_real(b).sum()) for b in batches)
        row = {"name": name, "status": "ran", "perplexity": perplexity(model, batches, acc),
               "forward_tokens_per_s": real / statistics.median(times),
               "forward_peak_bytes": measure.peak_bytes(acc.device), "generate_kernels": traced.kernels(name)}
        if reference is None:
            reference = (logits, tokens)
        row.update(_against(reference, logits, tokens, batches))
        rows.append(row)
    decoded = data.tokenizer.batch_decode(reference[1], skip_special_tokens=True) if reference else []
    return {"model": str(model_dir), "reference": "eager", "rows": rows, "prompts": prompts["prompts"],
            "eager_generations": decoded}


def _real(batch) -> torch.Tensor:
    """Where a batch holds tokens rather than padding (everywhere in packed rows)."""
    if "attention_mask" in batch:
        return batch["attention_mask"].bool()
    return torch.ones_like(batch["input_ids"], dtype=torch.bool)


def _against(reference, logits, tokens, batches) -> dict:
    """Logit differences and KL(eager || this) over the real positions; generated tokens against eager's."""
    diffs, kls = [], []
    for ref, got, b in zip(reference[0], logits, batches):
        real = _real(b)[:, :-1]
        diffs.append((got - ref)[real].abs())
        ref_logp, got_logp = F.log_softmax(ref[real].double(), -1), F.log_softmax(got[real].double(), -1)
        kls.append((ref_logp.exp() * (ref_logp - got_logp)).sum(-1))
    diffs, kls = torch.cat(diffs), torch.cat(kls)
    same = (tokens == reference[1]).all(dim=1)
    first_diff = [int((t != r).nonzero()[0]) if not s else None for t, r, s in zip(tokens, reference[1], same)]
    return {"max_logit_diff": diffs.max().item(), "mean_logit_diff": diffs.mean().item(),
            "mean_kl": kls.mean().item(), "generations_matching": int(same.sum()), "generations": len(same),
            "first_divergence": first_diff}


def format_table(evaluation: dict) -> str:
    lines = ["| implementation | perplexity | max logit gap to eager | mean logit gap to eager | KL vs eager | "
             "greedy = eager | forward tokens/s | peak memory MiB | kernels in generate() (decode) |",
             "|---" * 9 + "|"]
    for r in evaluation["rows"]:
        if r["status"] != "ran":
            lines.append(f"| {r['name']} | {r['status']}: {r['why']} |" + " |" * 7)
            continue
        mem = f"{r['forward_peak_bytes'] / 2**20:.0f}" if r["forward_peak_bytes"] else "n/a"
        lines.append(f"| {r['name']} | {r['perplexity']:.3f} | {r['max_logit_diff']:.2e} | "
                     f"{r['mean_logit_diff']:.2e} | {r['mean_kl']:.2e} | {r['generations_matching']}/"
                     f"{r['generations']} | {r['forward_tokens_per_s']:.0f} | {mem} | "
                     f"{', '.join(r['generate_kernels'].get('forward (decode)', []))} |")
    return "\n".join(lines)


def main(argv=None):
    parser = add_evaluation_options(finetune.add_options(argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)))
    args = parser.parse_args(argv)
    names = finetune.implementation_names(args.attn)
    if finetune.models.is_embedded(args.model):
        raise SystemExit("--model: give a trained model (a folder finetune.py wrote, e.g. runs/eager/model, "
                         "or a hub id); the embedded default is an untrained config.")
    acc = finetune.accelerator_for(args)
    data = finetune.Data(args)
    evaluation = evaluate(args.model, names, data, args, acc)
    if acc.is_main_process:
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "evaluation.json").write_text(json.dumps(evaluation, indent=1))
        print(format_table(evaluation))


if __name__ == "__main__":
    main()
