"""The optional autotuner (HF_SDPA_AUTOTUNE=1): a bounded search per key, cached on disk, same answers."""
import json
import time

import pytest
import torch

from conftest import DEVICE
from hf_sdpa.kernels import attention, autotune, ops
from hf_sdpa.kernels.config import LaunchConfig
from reference import assert_within, attention_ref, pattern_mask

SLOW, BROKEN, FAST = LaunchConfig(16, 16, 1, 1), LaunchConfig(32, 16, 1, 1), LaunchConfig(16, 32, 1, 1)
CPU = torch.device("cpu")


@pytest.fixture
def tuner(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_SDPA_AUTOTUNE", "1")
    monkeypatch.setenv("HF_SDPA_CACHE", str(tmp_path))
    fresh = autotune.Tuner()
    monkeypatch.setattr(ops, "TUNER", fresh)
    return fresh


def fake_launch(runs):
    def launch(cfg):
        runs.append(cfg)
        if cfg == BROKEN:
            raise RuntimeError("out of resources: shared memory")
        time.sleep(0.02 if cfg == SLOW else 0.001)
    return launch


def test_search_skips_failures_keeps_the_fastest_and_caches_it_on_disk(tuner):
    runs = []
    launch = fake_launch(runs)
    assert tuner.choose("key", SLOW, [SLOW, BROKEN, FAST], launch, CPU) == FAST
    assert tuner.searches == 1
    searched = len(runs)
    assert tuner.choose("key", SLOW, [SLOW, BROKEN, FAST], launch, CPU) == FAST
    another_process = autotune.Tuner()
    assert another_process.choose("key", SLOW, [SLOW, BROKEN, FAST], launch, CPU) == FAST
    assert another_process.searches == 0 and len(runs) == searched
    assert json.loads(autotune.cache_file(CPU).read_text()) == {"key": [16, 32, 1, 1, False, None]}


def test_search_is_bounded_and_starts_from_the_table(tuner):
    many = [LaunchConfig(16, 16, 1, stages) for stages in range(1, 20)]
    tried = []
    tuner.choose("key", many[5], many, tried.append, CPU)
    assert tried[0] == many[5]
    assert len(set(tried)) == autotune.MAX_CANDIDATES


def test_all_candidates_failing_keeps_the_table(tuner):
    assert tuner.choose("key", BROKEN, [BROKEN], fake_launch([]), CPU) == BROKEN


def test_off_by_default(monkeypatch):
    monkeypatch.delenv("HF_SDPA_AUTOTUNE", raising=False)
    never = autotune.Tuner()
    assert never.choose("key", SLOW, [SLOW, FAST], lambda cfg: pytest.fail("searched"), CPU) == SLOW


def test_tuned_attention_matches_the_reference_and_searches_once_per_key(tuner):
    b, h, hk, s, d = 2, 4, 2, 40, 32
    q = torch.randn(b, h, s, d, device=DEVICE, dtype=torch.float16, requires_grad=True)
    k, v = (torch.randn(b, hk, s, d, device=DEVICE, dtype=torch.float16, requires_grad=True) for _ in range(2))
    dout = torch.randn_like(q)
    keep = pattern_mask(b, s, s, causal=True, device=DEVICE)
    exact = attention_ref(q, k, v, keep)
    low = attention_ref(q, k, v, keep, dtype=torch.float16)
    exact_grads = torch.autograd.grad(exact, (q, k, v), dout.double())
    low_grads = torch.autograd.grad(low, (q, k, v), dout)
    for _ in range(2):
        out = attention(q, k, v, causal=True)
        grads = torch.autograd.grad(out, (q, k, v), dout)
        for name, ours, ref, same in zip(("out", "dq", "dk", "dv"), (out,) + grads, (exact,) + exact_grads,
                                         (low,) + low_grads):
            assert_within(name, ours, ref, same, torch.float16)
    assert tuner.searches == 3  # forward, dK/dV, dQ: once each, not again on the second call
    saved = json.loads(autotune.cache_file(q.device).read_text())
    assert sorted(key.split("|")[0] for key in saved) == ["dkdv", "dq", "forward"]
