"""hf_sdpa.trace: the kernel that really ran, per attention call, agrees with what torch and the doctor say."""
import json

import pytest
import torch
import torch.nn.functional as F
import transformers as tf
from transformers import AttentionInterface

import hf_sdpa
from conftest import HAS_GPU
from hf_sdpa import AttentionRefused, trace
from hf_sdpa.doctor import Case, report
from hf_sdpa.presets import embedded_model

CPU_FLASH = "_scaled_dot_product_flash_attention_for_cpu"
# What each name must be seen running on this machine.
EXPECTED = {
    "eager": "math", "sdpa_math": "math", "triton_attention": "attention_fwd_kernel",
    "sdpa_fa2": "_scaled_dot_product_flash_attention" if HAS_GPU else CPU_FLASH,
    "sdpa_efficient": "_scaled_dot_product_efficient_attention",
    "sdpa_cudnn": "_scaled_dot_product_cudnn_attention",
}
DEVICE = "cuda" if HAS_GPU else "cpu"


def tiny(attn, **config):
    model = embedded_model("embedded:tiny", attn, 64)
    if config:
        fields = {**model.config.to_dict(), **config}
        torch.manual_seed(0)
        model = tf.LlamaForCausalLM(tf.LlamaConfig(**fields)).to(DEVICE)
        model.set_attn_implementation(attn)
    return model.to(DEVICE).train()


def batch(padded: bool):
    ids = torch.randint(3, 2000, (2, 24), device=DEVICE)
    mask = torch.ones_like(ids)
    if padded:
        mask[1, :9] = 0
    return ids, mask


def step(model, padded=False):
    ids, mask = batch(padded)
    with trace() as t:
        model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss.backward()
    return t


@pytest.mark.skipif(HAS_GPU, reason="CPU kernels named")
def test_transformers_sdpa_on_the_cpu_takes_the_flash_kernel_and_falls_back_to_math_for_dropout():
    t = step(tiny("sdpa"))
    assert t.kernels("sdpa") == {"forward": [CPU_FLASH], "backward": [CPU_FLASH + "_backward"]}
    t = step(tiny("sdpa", attention_dropout=0.3))  # torch's CPU flash kernel has no dropout
    assert t.kernels("sdpa")["forward"][0].startswith("math (")


@pytest.mark.skipif(HAS_GPU, reason="CPU kernels named")
def test_direct_calls_with_unequal_heads_and_dropout():
    q, k, v = torch.randn(2, 4, 16, 32), torch.randn(2, 2, 16, 32), torch.randn(2, 2, 16, 32)
    with trace() as t:
        F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), dropout_p=0.3)
    assert [c.implementation for c in t.calls] == ["(called directly)"] * 2
    assert t.calls[0].kernel == CPU_FLASH and t.calls[1].kernel.startswith("math (")


@pytest.mark.parametrize("name", ["eager", "sdpa", *hf_sdpa.NAMES])
def test_each_name_runs_what_it_claims_forward_and_backward(name):
    model = tiny(name)
    try:
        t = step(model, padded=True)
    except AttentionRefused:
        assert name in ("sdpa_efficient", "sdpa_cudnn", "sdpa_fa2")  # CPU-only backends, fp32 or masks on CUDA
        return
    layers = model.config.num_hidden_layers
    forward = [c for c in t.calls if c.phase == "forward"]
    backward = [c for c in t.calls if c.phase == "backward"]
    assert len(forward) == len(backward) == layers  # one scope per layer and pass, all closed
    assert sorted(c.layer for c in forward) == list(range(layers))
    assert all(c.implementation == name and c.ms is not None and c.ms >= 0 for c in t.calls)
    assert all(c.mask != "none" for c in forward) or name == "triton_attention"
    if name in EXPECTED:
        assert all(EXPECTED[name] in c.kernel for c in forward), t.kernels()
        assert all("bwd" in c.kernel or "backward" in c.kernel for c in backward), t.kernels()


def test_trace_leaves_everything_as_it_was():
    before = dict(AttentionInterface._global_mapping)
    sdpa = F.scaled_dot_product_attention
    with pytest.raises(RuntimeError):
        with trace():
            raise RuntimeError("boom")
    assert AttentionInterface._global_mapping == before and F.scaled_dot_product_attention is sdpa
    from hf_sdpa.kernels import ops
    assert ops.LAUNCH_HOOKS == []


def test_generate_shows_prefill_and_decode_and_reports_are_consistent():
    model = tiny("sdpa_math").eval()
    ids, mask = batch(padded=True)
    with trace() as t, torch.no_grad():
        model.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False, pad_token_id=0)
    phases = [c.phase for c in t.calls]
    assert phases.count("forward") == 2 and phases.count("forward (decode)") == 4  # 2 layers x (1 + 2 steps)
    rows = t.summary()
    assert sum(r["calls"] for r in rows) == 6 and sum(r["share"] for r in rows) == pytest.approx(1.0)
    data = json.loads(t.to_json())
    assert len(data["calls"]) == 6 and data["calls"][0]["query"][2] == 24
    assert "| sdpa_math | forward (decode) |" in t.format_summary()


@pytest.mark.parametrize("mask", ["causal", "padding"])
def test_the_doctor_and_the_tracer_agree(mask):
    """Each name the doctor says can run a case is seen running the kernel it claims on a model with that
    case's shape; each it says cannot run it refuses."""
    case = Case(batch=2, heads=4, kv_heads=2, q_len=24, kv_len=24, head_dim=32, dtype="float32", mask=mask,
                backward=True)
    verdicts = report(case)["case"]["implementations"]
    for name, verdict in verdicts.items():
        model = tiny(name)
        if not verdict["can run"]:
            with pytest.raises(AttentionRefused):
                step(model, padded=mask == "padding")
            continue
        t = step(model, padded=mask == "padding")
        assert all(EXPECTED[name] in k for k in t.kernels(name)["forward"]), (name, t.kernels())


def test_cli_trace_prints_the_table(capsys):
    from hf_sdpa.cli import main
    main(["trace", "--model", "embedded:tiny", "--attn", "sdpa_math,sdpa_efficient", "--batch", "2", "--seq", "16",
          "--padding", "0.5", "--new-tokens", "2"])
    out = capsys.readouterr().out
    assert "| sdpa_math | forward | math (" in out and "| sdpa_math | backward |" in out
    assert ("sdpa_efficient refused" in out) != HAS_GPU
