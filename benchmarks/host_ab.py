"""Host-time A/Bs on the CPU: our Python per call with every kernel launch stubbed, the variants taking turns.

Used by descriptor_host_ab.py and decode_host_ab.py (benchmarks/NOTES.md entries 19 and 21).
"""
import argparse
import statistics
import time

from hf_sdpa.kernels import ops


def arguments(rounds: int, calls: int) -> argparse.Namespace:
    """--rounds and --calls, with these defaults."""
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=rounds)
    p.add_argument("--calls", type=int, default=calls)
    return p.parse_args()


def stub_launches():
    """Every launcher a no-op, and the GPU checks answering as on Hopper, so ops takes its Gluon paths."""
    for name in ("FORWARD", "DECODE", "DQ", "DKDV", "DELTA", "HOPPER_FWD", "HOPPER_DKDV", "HOPPER_DQ"):
        setattr(ops, name, lambda grid, *args, **kwargs: None)
    ops._is_hopper = ops.has_tma = lambda device: True
    ops._multiprocessors = lambda device: 132  # an H100 SXM's


def interleaved(variants: dict, rounds: int, calls: int, before=lambda name: None) -> dict:
    """{name: [us per call of each round]}: per round each variant (name -> callable) runs `calls` times after a
    warm-up, the order reversed every other round; before(name) sets a variant up before its turn."""
    times = {name: [] for name in variants}
    for r in range(rounds):
        for name in (list(variants) if r % 2 else list(variants)[::-1]):
            before(name)
            fn = variants[name]
            for _ in range(30):
                fn()
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            times[name].append((time.perf_counter() - start) / calls * 1e6)
    return times


def report(label: str, times: dict):
    for name, values in times.items():
        print(f"{label}{name}: median {statistics.median(values):.1f} us per call, rounds "
              + " ".join(f"{v:.0f}" for v in values))
