"""Registration, names, pinning under threads, and torch's switches after a refusal."""
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

import hf_sdpa
from conftest import HAS_GPU, Ops
from hf_sdpa import IMPLEMENTATIONS, NAMES, AttentionInput, AttentionRefused
from hf_sdpa.kernels.config import interpreting

ROOT = Path(__file__).resolve().parents[1]


def test_every_name_is_registered_in_both_interfaces_idempotently():
    hf_sdpa.register()
    hf_sdpa.register()
    for name in NAMES:
        assert name in AttentionInterface._global_mapping
        assert name in AttentionMaskInterface._global_mapping
        assert "flash" not in name  # Transformers treats such names as FlashAttention or hub-kernel requests
    assert set(NAMES) == {"sdpa_math", "sdpa_fa2", "sdpa_efficient", "sdpa_cudnn", "triton_attention"}


def test_kernels_is_not_a_top_level_module():
    """From a checkout's root the folder is findable as `kernels`; it must stay empty and version-less there."""
    code = "import kernels; assert not hasattr(kernels, 'attention') and not hasattr(kernels, '__version__')"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    import hf_sdpa.kernels
    assert hasattr(hf_sdpa.kernels, "attention")


@pytest.mark.skipif(HAS_GPU, reason="CPU kernels named below")
def test_two_threads_two_pinned_backends_each_get_their_own():
    inp = AttentionInput(*(torch.randn(2, 4, 64, 32) for _ in range(3)), causal=True)
    errors = []

    def work(name, expect, forbid):
        try:
            for _ in range(40):
                with Ops() as ops:
                    IMPLEMENTATIONS[name].run(inp)
                assert expect in ops.seen and forbid not in ops.seen, (name, ops.seen)
        except Exception as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    flash = "_scaled_dot_product_flash_attention_for_cpu"
    threads = [threading.Thread(target=work, args=("sdpa_fa2", flash, "bmm")),
               threading.Thread(target=work, args=("sdpa_math", "bmm", flash))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_switches_are_unchanged_after_a_refusal():
    before = (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled(),
              torch.backends.cuda.mem_efficient_sdp_enabled(), torch.backends.cuda.cudnn_sdp_enabled())
    q = torch.randn(1, 2, 8, 16, dtype=torch.float64)
    inp = AttentionInput(q, q, q, dropout=0.5)  # fp64 with dropout: no fused backend takes it anywhere
    for name in ("sdpa_fa2", "sdpa_efficient", "sdpa_cudnn"):
        with pytest.raises(AttentionRefused, match=name):
            IMPLEMENTATIONS[name].run(inp)
    after = (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled(),
             torch.backends.cuda.mem_efficient_sdp_enabled(), torch.backends.cuda.cudnn_sdp_enabled())
    assert before == after


def test_refusal_names_torch_reasons_and_alternatives():
    q = torch.randn(1, 2, 8, 16)
    with pytest.raises(AttentionRefused) as err:
        IMPLEMENTATIONS["sdpa_fa2"].run(AttentionInput(q, q, q, dropout=0.3))
    text = str(err.value)
    assert "sdpa_fa2 cannot run this input" in text and "torch: " in text
    assert "dropout" in text.lower() and "sdpa_math" in text.split("can run it here:")[1]


def test_doctor_reports_every_implementation_and_a_case():
    from hf_sdpa.doctor import Case, report
    rep = report(Case(batch=1, heads=4, kv_heads=2, q_len=16, head_dim=32, mask="padding", kv_len=16))
    assert set(rep["implementations"]) == set(NAMES)
    verdicts = rep["case"]["implementations"]
    if not HAS_GPU:
        assert verdicts["sdpa_math"]["can run"] and verdicts["sdpa_fa2"]["can run"]
        assert not verdicts["sdpa_cudnn"]["can run"] and "CUDA" in verdicts["sdpa_cudnn"]["why not"][0]
        assert any("switch" in n for n in rep["notes"]) and any("need CUDA" in n for n in rep["notes"])


def test_doctor_names_the_triton_kernels_and_their_blocks_for_a_case():
    from hf_sdpa.doctor import Case, format_report, report
    rep = report(Case(batch=1, heads=4, kv_heads=2, q_len=16, kv_len=16, head_dim=32, backward=True))
    verdict = rep["case"]["implementations"]["triton_attention"]
    if not verdict["can run"]:
        pytest.skip("triton_attention cannot run here (no GPU and no TRITON_INTERPRET=1)")
    kernels = [launch.split()[0] for launch in verdict["kernels"]]
    assert kernels == ["attention_fwd_kernel", "attention_bwd_dq_kernel", "attention_bwd_dkdv_kernel"]
    assert "BLOCK_M=" in verdict["kernels"][0] and "warps=" in verdict["kernels"][0]
    assert "kernel: attention_fwd_kernel" in format_report(rep)
    assert "fixed table" in rep["case"]["triton_attention launch configurations"]
    expected = "interpreter" if interpreting() else "compiled kernel"
    assert expected in rep["case"]["triton_attention launches"]
    assert "triton_attention launches: " in format_report(rep)


def test_cli_doctor_json_runs():
    out = subprocess.run([sys.executable, "-m", "hf_sdpa", "doctor", "--json", "--q-len", "8", "--head-dim", "16"],
                         capture_output=True, text=True, check=True, cwd="/")
    assert '"implementations"' in out.stdout and '"case"' in out.stdout


@pytest.mark.parametrize("name", ["sdpa_math", "sdpa_fa2", "triton_attention"] if not HAS_GPU else NAMES)
def test_under_autocast_inputs_are_cast_as_torch_sdpa_casts_them(name):
    """Mixed precision hands over fp32 queries and keys (after RoPE) next to half values: every name computes
    in the autocast dtype, as F.scaled_dot_product_attention does, instead of refusing the mixed dtypes."""
    device = "cuda" if HAS_GPU else "cpu"
    q, k = (torch.randn(2, 4, 32, 32, device=device) for _ in range(2))
    v = torch.randn(2, 4, 32, 32, device=device).half()
    with torch.autocast(device, dtype=torch.float16):
        expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        out = IMPLEMENTATIONS[name].run(AttentionInput(q, k, v, causal=True))
    assert out.dtype == expected.dtype == torch.float16
    assert (out.float() - expected.float()).abs().max() < 2e-3
