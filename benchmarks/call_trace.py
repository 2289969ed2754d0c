"""Where a forward+backward call's time goes: the host's launches against the GPU's kernels, per variant.

    python benchmarks/call_trace.py --out DIR [--cases d128-mha-s512-full-b8,...] [--variants triton,hdq,sdpa_cudnn]

A variant's call can take longer than its kernels' sum although the host, on average, issues calls faster than the
GPU runs them: where the host launches a kernel only after the GPU has finished the one before, the GPU waits, and
do_bench's events count the wait (benchmarks/NOTES.md entry 43). This runs calls as do_bench does (the L2 cache
flushed before each, no synchronisation between them) under torch.profiler and prints, for a call in the middle,
each GPU operation with when the host launched it and how long the GPU stood idle before it, and the host's
longest operations in each such idle time. Variants as in hopper_bwd_ab.py ('triton', 'gluon', 'hdq', 'gluon_dq',
'sdpa_cudnn', 'sdpa_fa2'). Writes call_trace.md and one Chrome trace per case and variant.
"""
import argparse
import json
import os
import statistics

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from hopper_bwd_ab import runs, variant
from tune import case_runs, parse_case

GPU_KINDS = ("kernel", "gpu_memset", "gpu_memcpy")
LAUNCHES = ("cuda_runtime", "cuda_driver")


def traced_calls(fn, leaves, calls: int, path: str, stack: bool):
    """Runs fn calls times as do_bench does and writes the profile's Chrome trace to path; its events. stack: with
    Python's function calls too (they slow the host)."""
    flush = torch.empty(256 << 20, dtype=torch.int8, device="cuda")
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=stack) as prof:
        for i in range(calls):
            for t in leaves:
                t.grad = None
            flush.zero_()
            with record_function(f"call {i}"):
                fn()
        torch.cuda.synchronize()
    prof.export_chrome_trace(path)
    with open(path) as f:
        return [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]


def call_breakdown(events, call: int) -> dict:
    """For call number `call`: its GPU operations in order, each with its launch time (from the call's start on the
    host), the GPU's idle time before it and the host operations that ran in that idle time."""
    mark = next(e for e in events if e["name"] == f"call {call}" and e.get("cat") == "user_annotation")
    start, end = mark["ts"], mark["ts"] + mark["dur"]
    launches = {e["args"]["correlation"]: e for e in events
                if e.get("cat") in LAUNCHES and "correlation" in e.get("args", {})}
    gpu = sorted((e for e in events if e.get("cat") in GPU_KINDS), key=lambda e: e["ts"])
    # a call's GPU work: what its host window launched (the autograd thread's launches fall in it as well)
    ours = [e for e in gpu if start <= launches.get(e["args"].get("correlation"), {}).get("ts", -1) <= end]
    host = [e for e in events if e.get("cat") in ("cpu_op", "python_function") + LAUNCHES]
    rows, previous_end, mine = [], None, {id(e) for e in ours}
    for e in gpu:  # the flush before the call counts as the GPU's previous operation
        if id(e) in mine:
            launched = launches[e["args"]["correlation"]]["ts"]
            idle = 0.0 if previous_end is None else max(0.0, e["ts"] - previous_end)
            busy_host = []
            if idle > 5:  # microseconds: the host ops that ran while the GPU waited for this launch
                busy_host = sorted(((h["dur"], h["name"]) for h in host
                                    if previous_end <= h["ts"] < launched and h["dur"] > 5), reverse=True)[:4]
            rows.append(dict(name=e["name"][:60], launched_us=launched - start, gpu_us=e["dur"], idle_before_us=idle,
                             host_in_idle=[f"{n[:40]} {d:.0f}us" for d, n in busy_host]))
        previous_end = e["ts"] + e["dur"]
    span = (ours[-1]["ts"] + ours[-1]["dur"] - ours[0]["ts"]) if ours else 0.0
    return dict(host_us=mark["dur"], gpu_busy_us=sum(e["dur"] for e in ours), gpu_span_us=span, operations=rows)


def measure(case_name, names, calls, out, stack):
    case = parse_case(case_name)
    fwd, fwd_bwd, leaves, dout = case_runs(case)
    result = {}
    for name in names:
        _, fb = runs(name, case, fwd, fwd_bwd, *leaves, dout)
        with variant(name, case["d"]):
            events = traced_calls(fb, leaves, calls, os.path.join(out, f"trace_{case_name}_{name}.json"), stack)
        per_call = [call_breakdown(events, i) for i in range(1, calls)]
        result[name] = dict(call=per_call[len(per_call) // 2],
                            median_span_us=statistics.median(c["gpu_span_us"] for c in per_call),
                            median_busy_us=statistics.median(c["gpu_busy_us"] for c in per_call),
                            median_host_us=statistics.median(c["host_us"] for c in per_call))
    return result


def markdown(results, device):
    lines = [f"# Where a forward+backward call's time goes: {device}", "",
             "Calls as do_bench runs them (L2 flushed before each), traced by torch.profiler (which adds host time). "
             "Per variant: the medians over the calls of the host's time per call, the GPU's span from a call's "
             "first operation to its last, and the GPU's busy time in it; then one call's operations.", ""]
    for case, variants in results.items():
        lines += [f"## {case}", ""]
        for name, r in variants.items():
            lines += [f"### {name}: host {r['median_host_us']:.0f} us, GPU span {r['median_span_us']:.0f} us, "
                      f"busy {r['median_busy_us']:.0f} us", "",
                      "| GPU operation | launched at (us) | GPU (us) | idle before (us) | host in the idle time |",
                      "|---|---|---|---|---|"]
            lines += [f"| {o['name']} | {o['launched_us']:.0f} | {o['gpu_us']:.0f} | {o['idle_before_us']:.0f} | "
                      f"{'; '.join(o['host_in_idle'])} |" for o in r["call"]["operations"]]
            lines.append("")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="benchmarks/results/local")
    p.add_argument("--cases", default="d128-mha-s512-full-b8,d128-mha-s512-full-b32")
    p.add_argument("--variants", default="triton,hdq,sdpa_cudnn")
    p.add_argument("--calls", type=int, default=8)
    p.add_argument("--stack", action="store_true", help="trace Python's function calls too (slower host)")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    results = {c: measure(c, a.variants.split(","), a.calls, a.out, a.stack) for c in a.cases.split(",")}
    with open(os.path.join(a.out, "call_trace.json"), "w") as f:
        json.dump(results, f, indent=1)
    text = markdown(results, torch.cuda.get_device_name())
    with open(os.path.join(a.out, "call_trace.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
