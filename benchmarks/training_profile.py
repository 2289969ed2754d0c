"""Where a training step's GPU time goes, per implementation: the e2e benchmark's 0.85B Llama, optionally
through torch.compile, profiled.

For each name, on one model with the same weights: the loss and the gradient norm of one forward+backward
(the names must agree: a name that skipped work would show here), then torch.profiler's GPU kernel time per
step and the kernels that take most of it, beside the step's wall time (synchronised): a wall time well above
the kernel time means the step is bound by the host. --host adds the host side (torch.profiler's CPU activity:
per op, CPU time over the profiled steps, our custom ops and autograd function among them). Writes training_profile.txt (and
prints it).

    python benchmarks/training_profile.py --compile --names triton_attention,sdpa --out benchmarks/results/local
    python benchmarks/training_profile.py --size 100m --batch 4 --seq 2048 --host   # issue 7's per-GPU step
"""
import argparse
import io
import os

import torch
from torch.profiler import ProfilerActivity, profile

from e2e_bench import SIZES, model_for, now


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1b", choices=sorted(SIZES))
    parser.add_argument("--names", default="triton_attention,sdpa_cudnn,sdpa")
    parser.add_argument("--seq", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--host", action="store_true", help="also the host side: CPU time per op")
    parser.add_argument("--out", default="benchmarks/results/local")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU for a smoke run (size tiny)
    names = args.names.split(",")
    model = model_for(args.size, names[0], device, torch.bfloat16 if device == "cuda" else torch.float32,
                      args.seq)
    model.train()
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq), device=device)
    report = io.StringIO()
    activities = [ProfilerActivity.CUDA] if device == "cuda" else [ProfilerActivity.CPU]
    if args.host and device == "cuda":
        activities.append(ProfilerActivity.CPU)
    for name in names:
        torch._dynamo.reset()
        model.set_attn_implementation(name)
        forward = torch.compile(model) if args.compile else model

        def step():
            loss = forward(input_ids=ids, labels=ids, use_cache=False).loss
            loss.backward()
            return loss.detach()

        for _ in range(2):  # compile and warm up
            model.zero_grad(set_to_none=True)
            loss = step()
        grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.float().norm() for p in model.parameters()]))

        def steps():
            for _ in range(args.steps):
                model.zero_grad(set_to_none=True)
                step()

        start = now(device)
        steps()
        wall_ms = (now(device) - start) * 1e3 / args.steps
        with profile(activities=activities) as prof:
            steps()
            if device == "cuda":
                torch.cuda.synchronize()
        events = prof.key_averages()
        attr = "device_time_total" if device == "cuda" else "cpu_time_total"
        total_ms = sum(getattr(e, attr) for e in events if e.device_type.name == activities[0].name) / 1e3
        print(f"## {name}{' (compiled)' if args.compile else ''}: loss {loss.item():.6f}, grad norm "
              f"{grad_norm.item():.6f}, {total_ms / args.steps:.1f} ms of kernels per step, {wall_ms:.1f} ms wall per "
              "step", file=report)
        print(events.table(sort_by=attr, row_limit=12, max_name_column_width=90), file=report)
        if args.host and device == "cuda":
            print(f"Host side ({args.steps} steps; self CPU time, then CPU time including callees):", file=report)
            print(events.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=90), file=report)
            print(events.table(sort_by="cpu_time_total", row_limit=15, max_name_column_width=90), file=report)
    text = report.getvalue()
    print(text)
    with open(os.path.join(args.out, "training_profile.txt"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
