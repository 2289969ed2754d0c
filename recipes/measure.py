"""Peak memory and wall time for the recipes, on CUDA (the allocator's peak) and on a Linux CPU (the process's
peak resident set, reset through /proc/self/clear_refs), so each implementation's run gets its own peak."""
import time
from pathlib import Path

import torch


def reset_peak(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # not Linux, or not allowed: peak_bytes then reports the whole process's peak


def peak_bytes(device) -> int | None:
    """CUDA: the peak bytes the allocator handed out; CPU: the peak resident set size (VmHWM), or None."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def now(device) -> float:
    """Wall time after the device finished its queued work."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
