"""Where generate()'s time goes, per implementation: the e2e benchmark's 0.85B Llama decoding, profiled.

For each name: new tokens/s of a warm generate(), a cProfile of one generate() (host: which Python functions
cost what per decode step) and torch.profiler's GPU kernel time per step (is the step host- or GPU-bound).
Writes generate_profile.txt (and prints a summary).

    python benchmarks/generate_profile.py --names sdpa_cudnn,triton_attention --out benchmarks/results/local
"""
import argparse
import cProfile
import io
import os
import pstats
import time

import torch

from e2e_bench import SIZES, greedy_generate, model_for


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1b", choices=sorted(SIZES))
    parser.add_argument("--names", default="sdpa_cudnn,triton_attention")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--out", default="benchmarks/results/local")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU for a smoke run (size tiny)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    report = io.StringIO()
    for name in args.names.split(","):
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        model = model_for(args.size, name, device, dtype, args.prompt + args.new_tokens)
        model.eval()
        torch.manual_seed(0)
        prompts = torch.randint(1, model.config.vocab_size, (args.batch, args.prompt), device=device)
        with torch.no_grad():
            greedy_generate(model, prompts, args.new_tokens)  # compile and warm up
            sync()
            t0 = time.perf_counter()
            greedy_generate(model, prompts, args.new_tokens)
            sync()
            seconds = time.perf_counter() - t0
            prof = cProfile.Profile()
            prof.enable()
            greedy_generate(model, prompts, args.new_tokens)
            sync()
            prof.disable()
            activity = torch.profiler.ProfilerActivity.CUDA if device == "cuda" else torch.profiler.ProfilerActivity.CPU
            with torch.profiler.profile(activities=[activity]) as gpu:
                greedy_generate(model, prompts, args.new_tokens)
                sync()
        gpu_us = sum(e.self_device_time_total for e in gpu.key_averages())
        summary = (f"## {name}: {args.batch * args.new_tokens / seconds:.0f} new tokens/s, "
                   f"{seconds / args.new_tokens * 1e3:.2f} ms per step, GPU kernels {gpu_us / args.new_tokens / 1e3:.2f} "
                   f"ms per step")
        print(summary, flush=True)
        report.write(summary + "\n\n")
        pstats.Stats(prof, stream=report).sort_stats("cumulative").print_stats(45)
        pstats.Stats(prof, stream=report).sort_stats("tottime").print_stats(25)
        report.write(gpu.key_averages().table(sort_by="self_cuda_time_total", row_limit=15) + "\n")
        del model
    with open(os.path.join(args.out, "generate_profile.txt"), "w") as f:
        f.write(report.getvalue())


if __name__ == "__main__":
    main()
