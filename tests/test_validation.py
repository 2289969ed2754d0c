"""Every input gives the right answer or a clear refusal, for every name that runs on this machine.

The spec is one function, `outcome`: an implementation either raises AttentionRefused (the package's error, with
a reason) or returns what the float64 reference returns, within the FlashAttention tolerance. Bad inputs must
refuse; odd but valid inputs (empty, NaN, a query with no key) must be answered like the reference.
"""
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import DEVICE, HAS_GPU
from hf_sdpa import IMPLEMENTATIONS, AttentionInput, AttentionRefused
from reference import assert_within, attention_ref, pattern_mask

RUNNABLE = list(IMPLEMENTATIONS) if HAS_GPU else ["sdpa_math", "sdpa_fa2", "triton_attention"]


def rand(*shape, dtype=torch.float32, device=DEVICE):
    return torch.randn(*shape, dtype=dtype, device=device)


def qkv(b=2, h=4, hk=2, sq=24, skv=24, d=32, dtype=torch.float32):
    return rand(b, h, sq, d, dtype=dtype), rand(b, hk, skv, d, dtype=dtype), rand(b, hk, skv, d, dtype=dtype)


def outcome(name, inp):
    """('refused', message) or ('ran', output)."""
    try:
        return "ran", IMPLEMENTATIONS[name].run(inp)
    except AttentionRefused as exc:
        text = str(exc)
        assert name in text and len(text) > 40, text  # names itself and says why
        return "refused", text


def reference(inp):
    b, _, sq, _ = inp.query.shape
    keep = pattern_mask(b, sq, inp.key.shape[2], causal=inp.causal, padding=inp.padding, window=inp.window,
                        device=inp.query.device)
    return attention_ref(inp.query, inp.key, inp.value, keep, scale=inp.scale)


def assert_matches_reference(name, inp, out):
    """Within 2x (plus a rounding epsilon) of the error the math composition makes in the same precision."""
    ref = reference(inp)
    low = IMPLEMENTATIONS["sdpa_math"].run(AttentionInput(
        inp.query, inp.key, inp.value, padding=inp.padding, causal=inp.causal, window=inp.window, scale=inp.scale))
    assert out.shape == ref.shape
    assert_within(name, out, ref, low, inp.query.dtype)


@pytest.mark.parametrize("name", RUNNABLE)
@pytest.mark.parametrize("bad, message", [
    ("dtype_mismatch", "dtype"),
    ("int_dtype", "float"),
    ("heads_not_multiple", "multiple"),
    ("kv_mismatch", "key"),
    ("dropout_out_of_range", "dropout"),
    ("window_negative", "window"),
    ("not_4d", "4-D"),
])
def test_bad_inputs_are_refused_with_the_reason(name, bad, message):
    q, k, v = qkv()
    fields = dict(causal=True)
    if bad == "dtype_mismatch":
        k = k.half()
    elif bad == "int_dtype":
        q, k, v = (torch.randint(0, 4, t.shape, device=DEVICE) for t in (q, k, v))
    elif bad == "heads_not_multiple":
        q = rand(2, 3, 24, 32)
    elif bad == "kv_mismatch":
        v = v[:, :, :10]
    elif bad == "dropout_out_of_range":
        fields["dropout"] = 1.5
    elif bad == "window_negative":
        fields["window"] = -3
    elif bad == "not_4d":
        q = q[0]
    status, text = outcome(name, AttentionInput(q, k, v, **fields))
    assert status == "refused" and message in text, text


@pytest.mark.parametrize("name", RUNNABLE)
def test_wrong_padding_mask_is_refused(name):
    q, k, v = qkv()
    for mask in (torch.ones(2, 23, dtype=torch.bool, device=DEVICE), torch.ones(3, 24, dtype=torch.bool, device=DEVICE)):
        status, text = outcome(name, AttentionInput(q, k, v, padding=mask, causal=True))
        assert status == "refused", text


@pytest.mark.parametrize("name", RUNNABLE)
def test_wrong_4d_mask_is_refused(name):
    q, k, v = qkv()
    for mask in (torch.ones(2, 1, 24, 23, dtype=torch.bool, device=DEVICE),   # kv_len does not match
                 torch.ones(2, 1, 24, 24, dtype=torch.int32, device=DEVICE)):  # neither bool nor float
        status, text = outcome(name, AttentionInput(q, k, v, dense_mask=mask))
        assert status == "refused", text
    if name == "triton_attention":  # a well-formed 4-D mask too: it takes 2-D padding only, never ignores one
        status, text = outcome(name, AttentionInput(q, k, v, dense_mask=torch.ones(2, 1, 24, 24, dtype=torch.bool,
                                                                                     device=DEVICE)))
        assert status == "refused" and "4-D" in text, text


@pytest.mark.skipif(not HAS_GPU, reason="needs two devices")
@pytest.mark.parametrize("name", RUNNABLE)
def test_device_mismatch_is_refused(name):
    q, k, v = qkv()
    status, text = outcome(name, AttentionInput(q, k.cpu(), v, causal=True))
    assert status == "refused" and "device" in text, text


@pytest.mark.parametrize("name", RUNNABLE)
@pytest.mark.parametrize("shape", [dict(b=0), dict(sq=0), dict(skv=0), dict(sq=1, skv=0)])
def test_empty_inputs_give_empty_or_zero_results(name, shape):
    q, k, v = qkv(**shape)
    status, out = outcome(name, AttentionInput(q, k, v, causal=False))
    assert status == "ran", out
    assert out.shape == q.shape and not torch.isnan(out).any() and (out == 0).all()


HALF = torch.float16 if HAS_GPU else torch.float32  # what every name runs on this machine


@pytest.mark.parametrize("name", RUNNABLE)
@pytest.mark.parametrize("causal", [False, True])
def test_a_query_with_no_key_gives_zeros_not_nan(name, causal):
    q, k, v = qkv(dtype=HALF)
    padding = torch.ones(2, 24, dtype=torch.bool, device=DEVICE)
    padding[1] = False    # the second sequence has no key at all
    padding[0, :5] = False  # left padding: with causal, the first queries of the first see no key
    inp = AttentionInput(q, k, v, padding=padding, causal=causal)
    status, out = outcome(name, inp)
    if status == "refused":
        assert name == "sdpa_fa2" and HAS_GPU  # FlashAttention-2 takes no mask
        return
    assert not torch.isnan(out).any() and (out[1] == 0).all()
    if causal:
        assert (out[0, :, :5] == 0).all()
    assert_matches_reference(name, inp, out)


@pytest.mark.parametrize("name", RUNNABLE)
def test_nan_and_inf_reach_exactly_the_outputs_that_see_them(name):
    """A NaN in one query row makes that row non-finite and nothing else; an inf in one value makes that
    dimension non-finite in every row of its head group that attends the key, and in no other batch, head or
    dimension. Rows of the group that mask the key out may turn 0 * inf into NaN (the reference does, and so
    does any kernel whose tile holds that key) or skip it."""
    q, k, v = qkv(dtype=HALF)
    q[0, 1, 5, 3] = float("nan")
    v[1, 0, 7, 2] = float("inf")  # kv head 0 serves query heads 0 and 1
    status, out = outcome(name, AttentionInput(q, k, v, causal=True))
    assert status == "ran", out
    expected = torch.zeros_like(out, dtype=torch.bool)
    expected[0, 1, 5, :] = True
    expected[1, 0:2, 7:, 2] = True  # causal: rows 7 and later see key 7
    allowed = expected.clone()
    allowed[1, 0:2, :, 2] = True
    bad = ~torch.isfinite(out)
    wrong = (expected & ~bad) | (bad & ~allowed)
    assert not wrong.any(), f"{name}: {int(wrong.sum())} outputs wrong, first at {wrong.nonzero()[0].tolist()}"


@pytest.mark.parametrize("name", RUNNABLE)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_other_dtypes_run_right_or_refuse(name, dtype):
    inp = AttentionInput(*qkv(dtype=dtype), causal=True)
    status, out = outcome(name, inp)
    if status == "ran":
        assert out.dtype == dtype
        assert_matches_reference(name, inp, out)


@pytest.mark.parametrize("name", RUNNABLE)
def test_large_head_size_runs_right_or_refuses(name):
    inp = AttentionInput(*qkv(d=320, sq=8, skv=8), causal=True)
    status, out = outcome(name, inp)
    if status == "ran":
        assert_matches_reference(name, inp, out)
    else:
        assert name != "sdpa_math", out  # the math path takes any head size


EXAMPLES = int(os.environ.get("HF_SDPA_HYPOTHESIS_EXAMPLES", "20"))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_random_inputs_across_every_name(data):
    """Random batch, heads, GQA ratio, lengths, head size, padding, window, dtype and strides: each name that
    runs here either refuses or matches the float64 reference."""
    b = data.draw(st.integers(1, 3), "batch")
    hk = data.draw(st.integers(1, 2), "kv_heads")
    h = hk * data.draw(st.sampled_from([1, 2, 4]), "group")
    sq = data.draw(st.integers(1, 40), "q_len")
    skv = data.draw(st.integers(1, 40), "kv_len")
    d = data.draw(st.sampled_from([8, 16, 32, 40, 64]), "head_dim")
    dtype = data.draw(st.sampled_from([torch.float32, torch.float16] + ([torch.bfloat16] if HAS_GPU else [])),
                      "dtype")
    causal = data.draw(st.booleans(), "causal")
    window = data.draw(st.one_of(st.none(), st.integers(1, 48)), "window") if causal else None
    layout = data.draw(st.sampled_from(["contiguous", "transposed", "sliced"]), "layout")
    if layout == "transposed":  # Transformers' layout: (B, S, H, D) storage seen as (B, H, S, D)
        q = rand(b, sq, h, d, dtype=dtype).transpose(1, 2)
        k, v = (rand(b, skv, hk, d, dtype=dtype).transpose(1, 2) for _ in range(2))
    elif layout == "sliced":  # views into larger buffers: a fused QKV projection's slices
        q = rand(b, h, sq + 3, d + 8, dtype=dtype)[:, :, 2:sq + 2, :d]
        k, v = (rand(b, hk, skv, 2 * d, dtype=dtype)[..., i * d:(i + 1) * d] for i in range(2))
    else:
        q, k, v = rand(b, h, sq, d, dtype=dtype), rand(b, hk, skv, d, dtype=dtype), rand(b, hk, skv, d, dtype=dtype)
    padding = None
    if data.draw(st.booleans(), "padded"):
        keep = [data.draw(st.integers(1, skv), f"keys kept in row {i}") for i in range(b)]
        padding = torch.zeros(b, skv, dtype=torch.bool, device=DEVICE)
        for i, n in enumerate(keep):
            padding[i, skv - n:] = True  # left padding
    inp = AttentionInput(q, k, v, padding=padding, causal=causal, window=window)
    for name in RUNNABLE:
        status, out = outcome(name, inp)
        if status == "ran":
            assert_matches_reference(name, inp, out)
