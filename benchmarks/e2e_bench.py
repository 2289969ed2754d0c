"""End to end: a Llama-style model built from a config (random weights) trained and decoding with each name.

One model serves every name (set_attn_implementation between runs), and the names take turns, round by
round, so that a slow phase of the machine or a warmer allocator favours none of them. Training: forward +
backward + AdamW step in bf16 on full rows (no padding), tokens/s (median of the timed rounds). Decoding:
generate() of --new-tokens tokens for a batch of prompts (greedy), new tokens/s (median of the rounds).
Issue 4's bar: triton_attention at least as fast as the fastest sdpa_* name in both.

--cache static decodes with a static cache, for which generate() compiles the decode step on CUDA
(torch.compile, mode "reduce-overhead": CUDA graphs). There the names run one after the other, each from a
fresh compile (taking turns would recompile at every switch). --compile trains through torch.compile(model);
--phases train or decode runs one of the two.

    python benchmarks/e2e_bench.py --size 1b --out benchmarks/results/local     # the device (0.85B params)
    python benchmarks/e2e_bench.py --size tiny --names sdpa_math,sdpa_fa2       # a smoke run on a CPU
"""
import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import hf_sdpa
from hf_sdpa.errors import AttentionRefused
from hf_sdpa.presets import PRESETS

SIZES = {
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=32000),
    # the same parameters in 16 heads of 128 (4 key/value heads), where the Gluon kernels' head size 128 runs
    "1b-d128": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=16,
                    num_key_value_heads=4, vocab_size=32000),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=256),
    "100m": PRESETS["100m"],  # the recipes' GPU model (issue 7's runs)
}


def now(device):
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def model_for(size, name, device, dtype, positions):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(**SIZES[size], max_position_embeddings=positions)
    model = LlamaForCausalLM(config).to(device=device, dtype=dtype)
    model.set_attn_implementation(name)
    return model


def greedy_generate(model, prompts, new_tokens, cache="dynamic"):
    """Exactly new_tokens greedy tokens per prompt (no padding, so no early stop on a pad id)."""
    return model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, do_sample=False, pad_token_id=0, cache_implementation=cache)


def take_turns(model, names, rounds, warmup, run, device):
    """{name: [seconds of each timed round]} for the names that ran; {name: why} for those that could not."""
    times, failed = {name: [] for name in names}, {}
    for round_ in range(warmup + rounds):
        for name in [n for n in names if n not in failed]:
            model.set_attn_implementation(name)
            try:
                t0 = now(device)
                run()
                seconds = now(device) - t0
            except AttentionRefused as exc:
                failed[name] = " ".join(str(exc).split())[:300]
                continue
            except torch.OutOfMemoryError:
                failed[name] = "out of memory"
                torch.cuda.empty_cache()
                continue
            if round_ >= warmup:
                times[name].append(seconds)
    return {n: t for n, t in times.items() if n not in failed}, failed


def train_rates(model, names, args, device):
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    model.train()
    forward = model
    if args.compile:  # one compiled model; each name gets its own graphs, kept while the names take turns
        torch._dynamo.config.recompile_limit = 64
        forward = torch.compile(model)

    def step():
        forward(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times, failed = take_turns(model, names, args.steps, args.warmup, step, device)  # the optimizer dies here
    return {n: args.batch * args.seq / statistics.median(t) for n, t in times.items()}, failed


def decode_rates(model, names, args, device):
    prompts = torch.randint(0, model.config.vocab_size, (args.decode_batch, args.prompt), device=device)
    model.eval()

    def generate():
        with torch.no_grad():
            greedy_generate(model, prompts, args.new_tokens, args.cache)

    if args.cache == "dynamic":
        times, failed = take_turns(model, names, args.decode_rounds, 1, generate, device)
    else:
        times, failed = {}, {}
        for name in names:  # compiled: one name at a time, two warm-up rounds (compile, then CUDA-graph capture)
            torch._dynamo.reset()
            got, why = take_turns(model, [name], args.decode_rounds, 2, generate, device)
            times.update(got)
            failed.update(why)
    return {n: args.decode_batch * args.new_tokens / statistics.median(t) for n, t in times.items()}, failed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1b", choices=sorted(SIZES))
    parser.add_argument("--names", default="sdpa," + ",".join(hf_sdpa.NAMES))
    parser.add_argument("--seq", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--decode-batch", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--decode-rounds", type=int, default=3)
    parser.add_argument("--cache", default="dynamic", choices=("dynamic", "static"))
    parser.add_argument("--compile", action="store_true", help="train through torch.compile(model)")
    parser.add_argument("--phases", default="train,decode", choices=("train,decode", "train", "decode"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    names = args.names.split(",")
    model = model_for(args.size, names[0], device, dtype, args.seq + args.new_tokens + args.prompt)
    train, train_failed, decode, decode_failed = {}, {}, {}, {}
    if "train" in args.phases:
        train, train_failed = train_rates(model, names, args, device)
        names_left = [n for n in names if n in train]
    if "decode" in args.phases:
        decode, decode_failed = decode_rates(model, names_left if "train" in args.phases else names, args, device)
    params = sum(p.numel() for p in model.parameters())
    rows = []
    for n in names:
        row = {"name": n, "params": params, "train_tokens_per_s": train.get(n), "decode_tokens_per_s": decode.get(n)}
        why = train_failed.get(n) or decode_failed.get(n)
        if why:
            row["refused" if why != "out of memory" else "failed"] = why
        rows.append(row)
        print(json.dumps(row), flush=True)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    lines = [f"# End to end: Llama {args.size} ({rows[0]['params'] / 1e9:.2f}B params), {name}, {dtype}, "
             f"torch {torch.__version__}", "",
             f"Training: batch {args.batch} x {args.seq}, AdamW{', torch.compile(model)' if args.compile else ''}, "
             f"the names taking turns, median of {args.steps} rounds. Decoding: batch {args.decode_batch}, prompt "
             f"{args.prompt}, {args.new_tokens} new tokens, greedy, {args.cache} cache"
             + (", decode step compiled (CUDA graphs), each name in its own block" if args.cache == "static"
                else ", the names taking turns") + f", median of {args.decode_rounds} rounds. Phases run: "
             f"{args.phases}.", "",
             "| implementation | train tokens/s | decode new tokens/s |", "|---|---|---|"]
    for r in rows:
        rates = [r[key] for key in ("train_tokens_per_s", "decode_tokens_per_s")]
        if r.get("refused") or r.get("failed"):
            lines.append(f"| {r['name']} | {r.get('refused') or r.get('failed')} | |")
        else:
            lines.append(f"| {r['name']} | " + " | ".join("" if x is None else f"{x:.0f}" for x in rates) + " |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = "e2e" + ("_compiled_training" if args.compile and "train" in args.phases else "") + (
            "_static_cache" if args.cache == "static" and "decode" in args.phases else "")
        (out / f"{stem}.json").write_text(json.dumps({"device": name, "args": vars(args), "rows": rows}, indent=1))
        (out / f"{stem}.md").write_text(table)


if __name__ == "__main__":
    main()
