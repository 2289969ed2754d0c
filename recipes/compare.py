"""The main job: fine-tune and evaluate one model with every attention implementation that runs here, on the
same data, seed and data order, and write one report.

    python recipes/compare.py                          # embedded defaults; a few minutes on a 2-core CPU
    accelerate launch recipes/compare.py --model embedded:100m --seq-len 2048 --steps 300

An implementation that cannot run the model is listed with the reason; one that fails mid-run (out of memory,
a crash) is reported as failed and the others still run. Writes OUTPUT_DIR/report.json, report.md,
loss_curves.png and speed_memory.png, and each run's folder (see finetune.py).
"""
import argparse
import sys
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import evaluate  # noqa: E402
import finetune  # noqa: E402
import report  # noqa: E402


def _failure(name: str, exc: BaseException) -> dict:
    kind = "out of memory" if isinstance(exc, torch.OutOfMemoryError) else type(exc).__name__
    last = traceback.format_exception_only(exc)[-1].strip()
    return {"name": name, "status": "failed", "why": f"{kind}: {last}"}


def compare(args) -> dict:
    from transformers import AutoModelForCausalLM
    names = finetune.implementation_names(args.attn)
    acc = finetune.accelerator_for(args)
    data = finetune.Data(args)
    verdicts = finetune.probe_all(args, names, data, acc)
    runs = {}
    for name in names:
        if verdicts[name]:
            runs[name] = {"name": name, "status": "refused", "why": verdicts[name]}
            continue
        try:
            runs[name] = finetune.train(args, name, data, acc)
        except Exception as exc:  # one implementation's failure must not end the comparison
            runs[name] = _failure(name, exc)
            acc.free_memory()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    trained = [n for n in names if runs[n]["status"] == "ran"]
    if not trained:
        raise SystemExit("no implementation could train this model here: " +
                         "; ".join(f"{n}: {r['why']}" for n, r in runs.items()))
    reference = "eager" if "eager" in trained else trained[0]
    evaluation = evaluate.evaluate(runs[reference]["model_dir"], trained, data, args, acc)
    batches = evaluate.held_out_batches(data, args)
    for name in trained:  # each implementation's own fine-tuned model, evaluated with itself
        model = AutoModelForCausalLM.from_pretrained(runs[name]["model_dir"], attn_implementation=name,
                                                     dtype=torch.float32).to(acc.device).eval()
        runs[name]["own_perplexity"] = evaluate.perplexity(model, batches, acc)
        del model
    return {"settings": report.settings(args, acc, data), "reference": reference, "runs": runs,
            "evaluation": evaluation}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    evaluate.add_evaluation_options(finetune.add_training_options(finetune.add_options(parser)))
    parser.set_defaults(attn="all", output_dir="runs/compare")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    result = compare(args)
    from accelerate import PartialState
    if PartialState().is_main_process:
        out = report.write(result, Path(args.output_dir))
        print(f"report: {out / 'report.md'} (and report.json, loss_curves.png, speed_memory.png)")


if __name__ == "__main__":
    main()
