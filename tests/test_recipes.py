"""The recipes end to end on the CPU: the comparison report, DDP over gloo and gradient accumulation following
the one-process curve, a SIGKILLed run resuming on the same curve, bad input stopping before training, and a
failing implementation reported while the others finish."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import HAS_GPU

# The CPU proof of the recipes (exact fp32 agreement, DDP over gloo); the GPU's evidence is the committed report.
pytestmark = pytest.mark.skipif(HAS_GPU, reason="CPU run of the recipes; the GPU report is benchmarks/results")
RECIPES = Path(__file__).resolve().parent.parent / "recipes"
TINY = ["--model", "embedded:tiny", "--seq-len", "32", "--log-every", "1", "--warmup", "1"]
sys.path.insert(0, str(RECIPES))


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    """One tokenizer and token cache for the module, away from the user's."""
    old = os.environ.get("HF_SDPA_CACHE")
    os.environ["HF_SDPA_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("HF_SDPA_CACHE")
    else:
        os.environ["HF_SDPA_CACHE"] = old


def run(script, *args, launch=None, check=True, background=False):
    cmd = [sys.executable, str(RECIPES / script), *args]
    if launch:
        cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", *launch, str(RECIPES / script), *args]
    if background:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_compare_report(tmp_path):
    run("compare.py", *TINY, "--steps", "4", "--batch-size", "2", "--save-every", "2", "--eval-batches", "1",
        "--eval-repeats", "1", "--prompts", "3", "--new-tokens", "4", "--output-dir", str(tmp_path))
    report = json.loads((tmp_path / "report.json").read_text())
    runs = report["runs"]
    from hf_sdpa import NAMES
    assert set(runs) == {"eager", "sdpa", *NAMES}
    ran = {n for n, r in runs.items() if r["status"] == "ran"}
    # What runs on a CPU: the math and CPU flash paths, and ours through the interpreter (conftest sets it).
    assert {"eager", "sdpa", "sdpa_math", "sdpa_fa2", "triton_attention"} <= ran
    for name in {"sdpa_efficient", "sdpa_cudnn"} - ran:
        assert runs[name]["status"] == "refused" and "CUDA" in runs[name]["why"]
    eager = runs["eager"]["losses"]
    assert len(eager) == 4 and all(7 < x < 8 for x in eager)  # about ln(vocab 2048) = 7.6 at the start
    for name in ran:
        assert runs[name]["losses"] == pytest.approx(eager, rel=1e-5, abs=1e-5), name
        assert runs[name]["train_tokens_per_s"] > 0
    # The kernels column: what each implementation was traced running in its first step.
    assert runs["sdpa_math"]["kernels"]["forward"][0].startswith("math (")
    assert "attention_fwd_kernel" in runs["triton_attention"]["kernels"]["forward"][0]
    assert "attention_bwd_dq_kernel" in runs["triton_attention"]["kernels"]["backward"][0]
    rows = {r["name"]: r for r in report["evaluation"]["rows"]}
    assert rows["triton_attention"]["generate_kernels"]["forward (decode)"]
    for name in ran:
        row = rows[name]
        assert row["generations_matching"] == row["generations"] == 3, name
        assert row["max_logit_diff"] < 1e-4 and row["mean_kl"] < 1e-8, name
        assert row["perplexity"] == pytest.approx(rows["eager"]["perplexity"], rel=1e-4)
    md = (tmp_path / "report.md").read_text()
    assert all(f"| {name} |" in md for name in runs)
    for png in ("loss_curves.png", "speed_memory.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG" and (tmp_path / png).stat().st_size > 10_000


def test_distributed_and_accumulation_follow_the_one_process_curve(tmp_path):
    """Global batch 4 as 1 process x 4, 2 processes x 2 (DDP over gloo) and 1 x 2 with accumulation 2 (and
    gradient checkpointing, which must not change the curve either)."""
    common = [*TINY, "--attn", "sdpa_math", "--steps", "4", "--save-every", "4"]
    run("finetune.py", *common, "--batch-size", "4", "--output-dir", str(tmp_path / "one"))
    run("finetune.py", *common, "--batch-size", "2", "--output-dir", str(tmp_path / "ddp"),
        launch=["--config_file", str(RECIPES / "configs" / "cpu_ddp.yaml")])
    run("finetune.py", *common, "--batch-size", "2", "--grad-accum", "2", "--gradient-checkpointing",
        "--output-dir", str(tmp_path / "acc"))
    one = losses(tmp_path / "one" / "sdpa_math")
    result = json.loads((tmp_path / "ddp" / "sdpa_math" / "result.json").read_text())
    assert result["processes"] == 2 and result["global_batch"] == 4
    assert len(one) == 4 and len(set(one)) == 4
    assert losses(tmp_path / "ddp" / "sdpa_math") == pytest.approx(one, rel=1e-5)
    assert losses(tmp_path / "acc" / "sdpa_math") == pytest.approx(one, rel=1e-5)
    # The multi-GPU report reads the same folders (benchmarks/scaling.py).
    sys.path.insert(0, str(RECIPES.parent / "benchmarks"))
    import scaling
    scaling.main([f"{k}={tmp_path / k}" for k in ("one", "ddp", "acc")] + ["--out", str(tmp_path / "scaling")])
    assert (tmp_path / "scaling" / "scaling.png").stat().st_size > 0
    rows = json.loads((tmp_path / "scaling" / "scaling.json").read_text())
    assert [(r["run"], r["processes"]) for r in rows] == [("one", 1), ("ddp", 2), ("acc", 1)]
    assert all(r["largest_loss_gap"] < 1e-4 and r["tokens_per_s"] > 0 for r in rows)


def test_packed_rows_keep_documents_apart_with_every_implementation(tmp_path):
    """Packed rows carry only position_ids: each implementation must keep the documents apart the same way."""
    run("finetune.py", *TINY, "--packing", "--attn", "eager,sdpa_math,triton_attention", "--steps", "3",
        "--batch-size", "2", "--save-every", "3", "--output-dir", str(tmp_path))
    eager = losses(tmp_path / "eager")
    for name in ("sdpa_math", "triton_attention"):
        assert losses(tmp_path / name) == pytest.approx(eager, rel=1e-5), name


def test_killed_run_resumes_on_the_same_curve(tmp_path):
    common = [*TINY, "--attn", "eager", "--steps", "8", "--save-every", "2", "--batch-size", "4"]
    run("finetune.py", *common, "--output-dir", str(tmp_path / "whole"))
    metrics = tmp_path / "cut" / "eager" / "metrics.jsonl"
    proc = run("finetune.py", *common, "--output-dir", str(tmp_path / "cut"), background=True)
    deadline = time.time() + 300
    while (not metrics.exists() or len(metrics.read_text().splitlines()) < 5) and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(metrics.read_text().splitlines()) < 8, "the run finished before it was killed"
    assert (tmp_path / "cut" / "eager" / "checkpoints" / "latest").read_text() in {"step-4", "step-6"}
    run("finetune.py", *common, "--output-dir", str(tmp_path / "cut"), "--resume")
    assert losses(tmp_path / "cut" / "eager") == losses(tmp_path / "whole" / "eager")


def test_interrupted_checkpoint_write_leaves_the_previous_one(tmp_path):
    """A folder left by a write that was killed is never taken as the newest checkpoint."""
    import finetune
    common = [*TINY, "--attn", "eager", "--save-every", "2", "--batch-size", "2", "--output-dir", str(tmp_path)]
    run("finetune.py", *common, "--steps", "4")
    ckpts = tmp_path / "eager" / "checkpoints"
    (ckpts / "tmp-step-6").mkdir()  # what a kill during save_state leaves behind
    (ckpts / "tmp-step-6" / "model.safetensors").write_bytes(b"half written")
    assert finetune.Checkpoints(tmp_path / "eager", accelerator=None).latest() == ckpts / "step-4"
    run("finetune.py", *common, "--steps", "6", "--resume")
    assert len(losses(tmp_path / "eager")) == 6


@pytest.mark.parametrize("bad, message", [
    (["--attn", "eager,sdpa_flashy"], "unknown implementation"),
    (["--attn", "eager,sdpa_cudnn"], "cannot train with"),
    (["--dataset", "DATA", "--text-column", "body"], "has no column 'body'"),
])
def test_bad_input_stops_before_training(tmp_path, bad, message):
    if torch.cuda.is_available() and "sdpa_cudnn" in bad[-1]:
        pytest.skip("sdpa_cudnn runs this model on a GPU")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": f"row {i} " * 20}) + "\n" for i in range(40)))
    out = tmp_path / "out"
    (out / "eager").mkdir(parents=True)
    (out / "eager" / "metrics.jsonl").write_text("earlier run\n")
    args = [str(data) if a == "DATA" else a for a in bad]
    result = run("finetune.py", *TINY, "--steps", "2", *args, "--output-dir", str(out), check=False)
    assert result.returncode != 0 and message in result.stderr
    assert (out / "eager" / "metrics.jsonl").read_text() == "earlier run\n"  # nothing written is lost


def test_a_saved_model_is_evaluated_and_fine_tuned_on_local_text(tmp_path):
    """The non-embedded paths: evaluate.py on a model folder (its own tokenizer), finetune.py from that folder
    on a local .txt file."""
    run("finetune.py", *TINY, "--attn", "eager", "--steps", "2", "--batch-size", "2", "--output-dir", str(tmp_path))
    model = str(tmp_path / "eager" / "model")
    run("evaluate.py", "--model", model, "--attn", "eager,sdpa_math", "--seq-len", "32", "--batch-size", "2",
        "--eval-batches", "1", "--prompts", "2", "--new-tokens", "3", "--output-dir", str(tmp_path / "eval"))
    rows = {r["name"]: r for r in json.loads((tmp_path / "eval" / "evaluation.json").read_text())["rows"]}
    assert rows["sdpa_math"]["generations_matching"] == 2
    assert rows["sdpa_math"]["perplexity"] == pytest.approx(rows["eager"]["perplexity"], rel=1e-5)
    text = tmp_path / "notes.txt"
    text.write_text("".join(f"line {i} of a small local text file, with a few more words.\n" for i in range(40)))
    run("finetune.py", "--model", model, "--dataset", str(text), "--seq-len", "32", "--attn", "sdpa_math",
        "--steps", "2", "--batch-size", "2", "--output-dir", str(tmp_path / "again"))
    assert len(losses(tmp_path / "again" / "sdpa_math")) == 2


def test_rows_without_text_are_skipped_and_counted(tmp_path):
    data = tmp_path / "data.jsonl"
    rows = [{"text": f"sentence number {i} of a small corpus. " * 8} for i in range(30)]
    rows += [{"text": None}, {"text": 12345}, {"text": "   "}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run("finetune.py", *TINY, "--dataset", str(data), "--attn", "eager", "--steps", "2",
                 "--batch-size", "2", "--output-dir", str(tmp_path / "out"))
    assert sum(int(n) for n in re.findall(r"skipped (\d+) of", result.stderr)) == 3  # over train and held-out
    assert len(losses(tmp_path / "out" / "eager")) == 2


def test_a_failing_implementation_is_reported_and_the_others_finish(tmp_path):
    """An out-of-memory in the middle of one implementation's run ends only that run."""
    import compare
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import sdpa_mask
    calls = {"n": 0}

    def runs_out_of_memory(module, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 4:  # the probe's forward passes, then the first training steps
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return sdpa_attention_forward(module, *args, **kwargs)

    AttentionInterface.register("oom_test", runs_out_of_memory)
    AttentionMaskInterface.register("oom_test", sdpa_mask)
    parser = compare.build_parser()
    args = parser.parse_args([*TINY, "--attn", "oom_test,eager", "--steps", "3", "--batch-size", "2",
                              "--eval-batches", "1", "--eval-repeats", "1", "--prompts", "2", "--new-tokens", "2",
                              "--output-dir", str(tmp_path)])
    result = compare.compare(args)
    assert result["runs"]["oom_test"]["status"] == "failed"
    assert "out of memory" in result["runs"]["oom_test"]["why"]
    assert result["runs"]["eager"]["status"] == "ran" and len(result["runs"]["eager"]["losses"]) == 3
