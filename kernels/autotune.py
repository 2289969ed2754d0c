"""Optional autotuning of launch configurations: a bounded search, cached per machine (HF_SDPA_AUTOTUNE=1).

By default the fixed table of config.py decides, so no call ever waits for a search. With HF_SDPA_AUTOTUNE=1,
the first call of a new key (pass, dtype, padded head size, power-of-two buckets of the lengths, GQA group,
kernel flags) times the table's choice and at most MAX_CANDIDATES - 1 alternatives, REPS runs each after a
warm-up, and keeps the fastest. The choice is written to a JSON file per GPU model and Triton version under
HF_SDPA_CACHE (default ~/.cache/hf_sdpa), so later processes start tuned (the ranks of one run that start
together each search once; they may settle on different configurations, which differ only in rounding).
A configuration that fails to compile or run (out of shared memory, registers) is skipped. Calls inside a
CUDA-graph capture never search.
"""
import json
import os
import statistics
import threading
import time
from dataclasses import astuple
from pathlib import Path
from typing import Callable, Dict, List

import torch
import triton

from .config import LaunchConfig, interpreting

MAX_CANDIDATES = 6
REPS = 3


def enabled() -> bool:
    return os.environ.get("HF_SDPA_AUTOTUNE", "0") == "1"


def bucket(n: int) -> int:
    """The power of two at or above n: lengths in one bucket share a configuration."""
    return 1 << max(0, n - 1).bit_length()


def cache_file(device: torch.device) -> Path:
    root = Path(os.environ.get("HF_SDPA_CACHE") or Path.home() / ".cache" / "hf_sdpa")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" and not interpreting() else "interpreter"
    tag = "".join(c if c.isalnum() or c in "-." else "_" for c in f"{gpu}-triton{triton.__version__}")
    return root / f"autotune-{tag}.json"


def _elapsed_ms(launch: Callable[[], None], device: torch.device) -> float:
    if device.type != "cuda":
        start = time.perf_counter()
        launch()
        return (time.perf_counter() - start) * 1e3
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    launch()
    end.record()
    end.synchronize()
    return begin.elapsed_time(end)


class Tuner:
    """Chosen configurations by cache file and key; `searches` counts the searches this tuner ran."""

    def __init__(self):
        self._chosen: Dict[Path, Dict[str, LaunchConfig]] = {}
        self._lock = threading.RLock()
        self.searches = 0

    def choose(self, key: str, default: LaunchConfig, candidates: List[LaunchConfig],
               launch: Callable[[LaunchConfig], None], device: torch.device) -> LaunchConfig:
        """The configuration to launch with; `launch(cfg)` runs the kernel once (its outputs are overwritten)."""
        if not enabled() or not candidates or (device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
            return default
        with self._lock:
            path = cache_file(device)
            known = self._chosen.get(path)
            if known is None:
                known = self._chosen[path] = self._read(path)
            if key not in known:
                known[key] = self._search(default, candidates, launch, device)
                self._write(path, key, known[key])
            return known[key]

    def _search(self, default, candidates, launch, device) -> LaunchConfig:
        self.searches += 1
        options = [default] + [c for c in candidates if c != default][:MAX_CANDIDATES - 1]
        timed = []
        for cfg in options:
            try:
                launch(cfg)  # compiles and warms up
                times = [_elapsed_ms(lambda: launch(cfg), device) for _ in range(REPS)]
            except Exception:  # noqa: BLE001 - a configuration this GPU cannot run is not a candidate
                continue
            timed.append((statistics.median(times), options.index(cfg), cfg))
        return min(timed)[2] if timed else default

    @staticmethod
    def _read(path: Path) -> Dict[str, LaunchConfig]:
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return {key: LaunchConfig(*value) for key, value in saved.items()}

    @staticmethod
    def _write(path: Path, key: str, cfg: LaunchConfig):
        """Merges into the file (another process may have added keys) and replaces it atomically."""
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            saved = {}
        saved[key] = list(astuple(cfg))
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(saved, indent=1, sort_keys=True))
        os.replace(tmp, path)


TUNER = Tuner()
