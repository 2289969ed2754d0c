"""Concurrency and compilation: threads running different names at once each get their own backend and the right
answer; each name compiles under torch.compile, gives the same logits, and a fixed-shape training loop does not
recompile after its first step."""
import copy
import threading

import pytest
import torch
import torch._dynamo

from conftest import DEVICE, HAS_GPU, Ops
from hf_sdpa.presets import embedded_model

DTYPE = torch.float16 if HAS_GPU else torch.float32
# The aten op each name must dispatch (seen per thread), and ops it must not.
FLASH = "_scaled_dot_product_flash_attention" if HAS_GPU else "_scaled_dot_product_flash_attention_for_cpu"
SIGNATURES = {
    "eager": ("_softmax", {FLASH, "_safe_softmax"}),
    "sdpa_math": ("_safe_softmax", {FLASH, "_softmax"}),
    "sdpa_fa2": (FLASH, {"_safe_softmax", "_softmax"}),
}
if HAS_GPU:
    SIGNATURES["sdpa_efficient"] = ("_scaled_dot_product_efficient_attention", {FLASH, "_safe_softmax"})
    SIGNATURES["sdpa_cudnn"] = ("_scaled_dot_product_cudnn_attention", {FLASH, "_safe_softmax"})


def model_and_batch():
    model = embedded_model("embedded:tiny", "eager", 64).to(DEVICE, DTYPE).eval()
    ids = torch.randint(3, 2000, (2, 24), device=DEVICE)
    return model, ids


def test_threads_running_different_names_at_once_each_get_their_own_backend():
    """Copies of one model (same weights), one per name, each run by two threads at once; a thread that got
    another thread's backend would see the wrong aten op, and one that got a wrong answer the wrong logits."""
    model, ids = model_and_batch()
    with torch.no_grad():
        expected = model(input_ids=ids, use_cache=False).logits.float()
    errors = []

    def work(name, copy_of_model):
        want, forbidden = SIGNATURES[name]
        try:
            for _ in range(15):
                with Ops() as ops, torch.no_grad():
                    logits = copy_of_model(input_ids=ids, use_cache=False).logits.float()
                assert want in ops.seen and not (forbidden & ops.seen), (name, sorted(ops.seen))
                assert (logits - expected).abs().max() < (2e-2 if HAS_GPU else 1e-4), name
        except Exception as exc:  # re-raised in the main thread
            errors.append(exc)

    threads = []
    for name in SIGNATURES:
        clone = copy.deepcopy(model)
        clone.set_attn_implementation(name)
        threads += [threading.Thread(target=work, args=(name, clone)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


@pytest.mark.parametrize("name", ["eager", "sdpa", "sdpa_math", "sdpa_fa2", "triton_attention"])
def test_compiled_model_gives_the_same_logits_and_does_not_recompile_per_step(name):
    torch._dynamo.reset()
    model, ids = model_and_batch()
    model = model.float()  # training in fp32; the GPU names that refuse fp32 are covered by the refusal tests
    if HAS_GPU and name == "sdpa_fa2":
        model = model.to(torch.bfloat16)
    model.set_attn_implementation(name)
    mask = torch.ones_like(ids)
    mask[1, :7] = 0
    if name == "sdpa_fa2" and HAS_GPU:
        mask = None  # FlashAttention-2 takes no mask
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
    compiled = torch.compile(model)
    with torch.no_grad():
        got = compiled(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
    real = slice(None) if mask is None else mask.bool()
    tolerance = 5e-2 if model.dtype == torch.bfloat16 else 1e-4
    assert (got - expected)[real].abs().max() < tolerance
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    labels = ids if mask is None else ids.masked_fill(mask == 0, -100)
    model.train()
    for step in range(3):
        # After the first step (which compiles the training graphs), a recompilation is an error.
        with torch._dynamo.config.patch(error_on_recompile=step > 0):
            compiled(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    torch._dynamo.reset()


def test_triton_attention_compiles_into_one_graph():
    """Our kernels are torch.library ops under torch.compile: a model's forward (padded batch) and its training
    step compile with fullgraph=True (a graph break is an error) and match the eager results."""
    torch._dynamo.reset()
    model, ids = model_and_batch()
    model = model.float()
    model.set_attn_implementation("triton_attention")
    mask = torch.ones_like(ids)
    mask[1, :7] = 0
    real = mask.bool()
    labels = ids.masked_fill(mask == 0, -100)

    def grads_of(run):
        model.zero_grad()
        loss = run(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        got = compiled(input_ids=ids, attention_mask=mask, use_cache=False).logits
    assert (got - expected)[real].abs().max() < 1e-4
    model.train()
    loss, grads = grads_of(model)
    loss_c, grads_c = grads_of(compiled)
    assert (loss - loss_c).abs() < 1e-4
    assert len(grads) == len(grads_c)
    assert all(torch.allclose(a, b, atol=1e-4, rtol=1e-3) for a, b in zip(grads, grads_c))
    torch._dynamo.reset()


@pytest.mark.parametrize("split_kv", [False, True])
def test_attention_function_compiles_into_one_graph(split_kv):
    """The plain API with GQA, a padding mask with gaps, a window and softcap: forward (and backward, for the
    regular path) in one compiled graph, equal to the eager call; split_kv: the decode path (q_len 2)."""
    from hf_sdpa.kernels import attention
    torch._dynamo.reset()
    sq, skv = (2, 600) if split_kv else (24, 40)
    dtype = torch.float16 if HAS_GPU else torch.float32
    q = torch.randn(2, 4, sq, 32, device=DEVICE, dtype=dtype, requires_grad=not split_kv)
    k, v = (torch.randn(2, 2, skv, 32, device=DEVICE, dtype=dtype, requires_grad=not split_kv) for _ in range(2))
    mask = torch.rand(2, skv, device=DEVICE) > 0.2
    mask[0, :5] = False

    def run(q, k, v, mask):
        return attention(q, k, v, causal=True, key_padding_mask=mask, window=17, softcap=20.0, split_kv=split_kv)

    compiled = torch.compile(run, fullgraph=True)
    with torch.no_grad():
        expected = run(q, k, v, mask)
        got = compiled(q, k, v, mask)
    assert torch.isfinite(got).all() and (got.float() - expected.float()).abs().max() < 1e-3
    if not split_kv:
        do = torch.randn_like(q)
        grads = torch.autograd.grad(run(q, k, v, mask), (q, k, v), do)
        grads_c = torch.autograd.grad(compiled(q, k, v, mask), (q, k, v), do)
        for name, a, b in zip("qkv", grads, grads_c):
            assert (a.float() - b.float()).abs().max() < 1e-3, name
    torch._dynamo.reset()
