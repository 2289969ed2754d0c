"""Fine-tune a causal LM with one attention implementation, or several in turn, on the same data, seed and
data order, under accelerate (one device, DDP or FSDP) or plain python.

    accelerate launch recipes/finetune.py --attn sdpa_math,triton_attention --steps 200
    python recipes/finetune.py --model embedded:tiny --attn eager --packing

Each implementation writes OUTPUT_DIR/NAME/: metrics.jsonl (one line per optimizer step), checkpoints/ (written
atomically; `--resume` continues from the newest on the same curve), model/ (the final model and tokenizer) and
result.json. The loss of a step is the mean over every real token of its global batch, whatever the number of
processes and accumulation steps, so 2 processes x batch 4 follow the curve of 1 x 8.
"""
import argparse
import json
import math
import os
import shutil
import sys
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

import hf_sdpa

# NVLink multicast stays off on shared multi-GPU hosts: it can take all of a host's GPUs out of service.
for _var, _value in {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
                     "NVSHMEM_DISABLE_NVLS": "1"}.items():
    os.environ.setdefault(_var, _value)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus  # noqa: E402
import measure  # noqa: E402
import models  # noqa: E402


def add_options(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options finetune, evaluate and compare share."""
    p.add_argument("--model", default=models.EMBEDDED,
                   help="a hub id or local path, or embedded[:tiny|small|100m] (a Llama-style config, random init)")
    p.add_argument("--dataset", default=None,
                   help="a `datasets` name or local files (comma separated); default: CPython's pydoc topics")
    p.add_argument("--text-column", default="text")
    p.add_argument("--vocab-size", type=int, default=None,
                   help="for the tokenizer trained on the corpus (embedded model only); default: the preset's")
    p.add_argument("--attn", default="eager", help="an attention implementation, or a comma separated list")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8, help="rows per process and micro-batch")
    p.add_argument("--precision", default="auto", choices=["auto", "no", "fp16", "bf16"],
                   help="accelerate's mixed precision; auto: bf16 on CUDA, none on the CPU")
    p.add_argument("--packing", action="store_true",
                   help="documents back to back in full rows, kept apart by position_ids; default: one per row, padded")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", default="runs")
    return p


def add_training_options(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--steps", type=int, default=100, help="optimizer steps")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--save-every", type=int, default=50, help="checkpoint every N steps (and at the end)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint of each run")
    return p


def accelerator_for(args):
    from accelerate import Accelerator
    precision = args.precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() else "no"
    # Without a GPU, `accelerate launch --multi_gpu` (torchrun underneath) gives DDP over gloo on the CPU;
    # accelerate's own `--cpu` launches one process unless MPI is installed.
    return Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available(),
                       fsdp_plugin=fsdp_plugin_for(precision))


def fsdp_plugin_for(precision: str):
    """Under an FSDP launch, the plugin accelerate would build, but with gradients reduced in fp32 (accelerate's
    default for bf16/fp16 reduces them in that dtype, rounding every summed gradient to it), as DDP does. The
    2-GPU curves' drift from one GPU's comes mostly from FSDP's bf16 parameters, not from the reduction
    (benchmarks/results/h200x2/fsdp_fp32_reduce). None when not launched with FSDP."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return None
    from accelerate import FullyShardedDataParallelPlugin
    plugin = FullyShardedDataParallelPlugin()  # the launch's FSDP settings, from the environment
    if precision not in ("bf16", "fp16"):
        return plugin
    low = torch.bfloat16 if precision == "bf16" else torch.float16
    last = dict(output_dtype=low) if plugin.fsdp_version == 2 else dict(buffer_dtype=low)
    plugin.mixed_precision_policy = dict(param_dtype=low, reduce_dtype=torch.float32, **last)
    plugin.set_mixed_precision(plugin.mixed_precision_policy)
    return plugin


def implementation_names(spec: str) -> list:
    """The names in `spec` ("all": eager, sdpa and every hf_sdpa name), each checked to exist."""
    from transformers import AttentionInterface
    from hf_sdpa import NAMES
    known = ["eager", "sdpa", *NAMES]
    names = known if spec == "all" else [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n != "eager" and n not in AttentionInterface._global_mapping]
    if unknown:
        raise SystemExit(f"--attn: unknown implementation(s) {unknown}; use any of {known} (or 'all'), "
                         f"or any name registered in Transformers' AttentionInterface.")
    return names


class Data:
    """The tokenizer, the training rows and the held-out documents (token ids) of one run."""

    def __init__(self, args):
        texts = corpus.load_texts(args.dataset, args.text_column, args.seed)
        if models.is_embedded(args.model):
            vocab = args.vocab_size or models.preset_of(args.model)["vocab_size"]
            self.tokenizer = corpus.trained_tokenizer(texts["train"], vocab)
        else:
            from transformers import AutoTokenizer
            self.tokenizer = AutoTokenizer.from_pretrained(args.model)
            if self.tokenizer.pad_token is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token
        tok = self.tokenizer
        self.bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id  # what starts a document
        self.train_rows = corpus.rows_from_docs(corpus.tokenized(texts["train"], tok), args.seq_len, self.bos,
                                                tok.eos_token_id, args.packing)
        self.validation = corpus.tokenized(texts["validation"], tok)
        self.validation_texts = texts["validation"]
        if not self.train_rows:
            raise corpus.DataError("the training split gave no rows; lower --seq-len or give more text.")


def _schedule(args):
    def factor(step):
        if step < args.warmup:
            return (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, args.steps - args.warmup)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def probe_all(args, names, data, accelerator) -> dict:
    """{name: None if it runs this model, else why not}: one forward and backward each, before any training."""
    batches = corpus.GlobalBatches(len(data.train_rows), args.batch_size, args.seed)
    first = corpus.collate([data.train_rows[i] for i in batches.indices(0)], data.tokenizer.pad_token_id)
    model = models.build(args.model, names[0], data.tokenizer, args.seq_len, args.seed).to(accelerator.device)
    verdicts = {}
    for name in names:
        try:
            model.set_attn_implementation(name)
            with accelerator.autocast():
                models.probe(model, first, accelerator.device)
            verdicts[name] = None
        except (ValueError, RuntimeError, NotImplementedError) as exc:  # AttentionRefused is a ValueError
            verdicts[name] = " ".join(str(exc).split())
    del model
    return verdicts


class Checkpoints:
    """OUTPUT/NAME/checkpoints/step-N, written to a temporary folder and renamed, with `latest` naming the
    newest complete one (replaced atomically): a kill during a write leaves the previous checkpoint usable."""

    def __init__(self, run_dir: Path, accelerator, keep: int = 2):
        self.dir, self.acc, self.keep = run_dir / "checkpoints", accelerator, keep

    def latest(self) -> Path | None:
        pointer = self.dir / "latest"
        if not pointer.exists():
            return None
        path = self.dir / pointer.read_text().strip()
        return path if path.is_dir() else None

    def save(self, step: int, history: list) -> None:
        acc, tmp, final = self.acc, self.dir / f"tmp-step-{step}", self.dir / f"step-{step}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        if acc.is_main_process:
            _write_json(tmp / "trainer_state.json", {"step": step, "history": history})
        acc.wait_for_everyone()
        if acc.is_main_process:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            _atomic_write(self.dir / "latest", final.name)
            done = sorted((p for p in self.dir.glob("step-*") if p != final), key=lambda p: int(p.name[5:]))
            for old in done[:max(0, len(done) - self.keep + 1)]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()

    def load(self) -> tuple:
        """(the step to continue from, the history so far); (0, []) when there is no checkpoint."""
        path = self.latest()
        if path is None:
            return 0, []
        self.acc.load_state(str(path))
        state = json.loads((path / "trainer_state.json").read_text())
        return state["step"], state["history"]


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_json(path: Path, obj) -> None:
    _atomic_write(path, json.dumps(obj, indent=1))


def train(args, name: str, data: Data, accelerator) -> dict:
    """Fine-tune with implementation `name`; returns the run's result (also written to its result.json)."""
    from tqdm.auto import tqdm
    acc, device = accelerator, accelerator.device
    run_dir = Path(args.output_dir) / name
    run_dir.mkdir(parents=True, exist_ok=True)
    model = models.build(args.model, name, data.tokenizer, args.seq_len, args.seed).to(device)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    # The learning rate is a function of the step alone (set below), so a resumed run needs no scheduler
    # state, and the schedule does not depend on the number of processes.
    lr_factor = _schedule(args)
    model, optimizer = acc.prepare(model, optimizer)
    checkpoints = Checkpoints(run_dir, acc)
    start, history = checkpoints.load() if args.resume else (0, [])
    if acc.is_main_process:
        _atomic_write(run_dir / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))

    world, rank = acc.num_processes, acc.process_index
    global_batch = args.batch_size * world * args.grad_accum
    batches = corpus.GlobalBatches(len(data.train_rows), global_batch, args.seed)
    pad = data.tokenizer.pad_token_id
    measure.reset_peak(device)
    timed_tokens, timed_seconds, kernels = 0, 0.0, {}
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, desc=name,
               disable=not acc.is_main_process or not sys.stderr.isatty())
    model.train()
    for step in bar:
        t0 = measure.now(device)
        micro = [corpus.collate([data.train_rows[i] for i in idx], pad)
                 for idx in batches.micro_batches(step, rank, world, args.grad_accum)]
        local = sum(int((b["targets"] != -100).sum()) for b in micro)
        tokens = int(acc.reduce(torch.tensor(local, device=device), "sum").item())
        ce_sum = torch.zeros((), device=device)
        with hf_sdpa.trace() if step == start else nullcontext() as traced:  # which kernels really ran
            for j, batch in enumerate(micro):
                batch = {k: v.to(device) for k, v in batch.items()}
                targets = batch.pop("targets")
                sync = nullcontext() if j == len(micro) - 1 else acc.no_sync(model)
                with sync, acc.autocast():
                    # use_cache=False: with a cache, Transformers' eager and sdpa masks ignore packed position_ids
                    logits = model(**batch, use_cache=False).logits[:, :-1]
                    ce = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100,
                                         reduction="sum")
                acc.backward(ce * world / tokens)
                ce_sum += ce.detach()
        if traced is not None:
            kernels = traced.kernels(name)
        acc.clip_grad_norm_(model.parameters(), 1.0)
        lr = args.lr * lr_factor(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss = acc.reduce(ce_sum, "sum").item() / tokens
        seconds = measure.now(device) - t0
        if step >= start + 2:  # the first steps compile and warm up
            timed_tokens, timed_seconds = timed_tokens + tokens, timed_seconds + seconds
        entry = {"step": step + 1, "loss": loss, "lr": lr, "tokens": tokens,
                 "seconds": seconds}
        history.append(entry)
        if acc.is_main_process:
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(entry) + "\n")
            if (step + 1) % args.log_every == 0:
                bar.write(f"{name} step {step + 1}/{args.steps}: loss {loss:.4f}, lr {lr:.2e}, "
                          f"{tokens / seconds:.0f} tokens/s")
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            checkpoints.save(step + 1, history)

    result = {"name": name, "status": "ran", "steps": args.steps, "losses": [h["loss"] for h in history],
              "final_loss": history[-1]["loss"] if history else None,
              "train_tokens_per_s": timed_tokens / timed_seconds if timed_seconds else None,
              "train_peak_bytes": measure.peak_bytes(device), "kernels": kernels, "processes": world,
              "global_batch": global_batch,
              "model_dir": str(run_dir / "model")}
    state = acc.get_state_dict(model)  # gathered from every process under FSDP
    if acc.is_main_process:
        acc.unwrap_model(model).save_pretrained(run_dir / "model", state_dict=state)
        data.tokenizer.save_pretrained(run_dir / "model")
        _write_json(run_dir / "result.json", result)
    acc.wait_for_everyone()
    acc.free_memory(model, optimizer)
    return result


def main(argv=None):
    parser = add_training_options(add_options(argparse.ArgumentParser(description=__doc__,
                                              formatter_class=argparse.RawDescriptionHelpFormatter)))
    args = parser.parse_args(argv)
    names = implementation_names(args.attn)
    accelerator = accelerator_for(args)
    data = Data(args)
    refused = {n: why for n, why in probe_all(args, names, data, accelerator).items() if why}
    if refused:
        lines = "\n".join(f"  {n}: {why}" for n, why in refused.items())
        raise SystemExit(f"cannot train with:\n{lines}\nNothing was trained. Drop those names from --attn "
                         f"(`hf-sdpa doctor` says what runs here).")
    for name in names:
        result = train(args, name, data, accelerator)
        if accelerator.is_main_process:
            print(f"{name}: final loss {result['final_loss']:.4f}, {args.output_dir}/{name}/")


if __name__ == "__main__":
    main()
