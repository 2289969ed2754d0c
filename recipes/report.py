"""The comparison's report: report.json (everything), report.md (a table per metric) and two plots."""
import json
import re
from pathlib import Path

from evaluate import format_table
from hf_sdpa.doctor import devices, versions


def settings(args, acc, data) -> dict:
    cuda = [d for d in devices() if d["device"].startswith("cuda")]
    return {"model": args.model, "dataset": args.dataset or "pydoc_data.topics (embedded)",
            "device": cuda[0]["name"] if cuda and acc.device.type == "cuda" else f"cpu ({devices()[0]['name']})",
            "processes": acc.num_processes, "precision": acc.mixed_precision, "seq_len": args.seq_len,
            "batch_size_per_process": args.batch_size, "grad_accum": args.grad_accum,
            "global_batch": args.batch_size * acc.num_processes * args.grad_accum, "steps": args.steps,
            "lr": args.lr, "packing": args.packing, "gradient_checkpointing": args.gradient_checkpointing,
            "seed": args.seed, "train_rows": len(data.train_rows), "vocab": len(data.tokenizer),
            "versions": versions()}


def _mib(n):
    return f"{n / 2**20:.0f}" if n else "n/a"


def _kernels(by_phase: dict) -> str:
    """`{"forward": [...], "backward": [...]}` as one short cell: kernel names without launch configs."""
    return "; ".join(", ".join(dict.fromkeys(re.sub(r"(_kernel)\([^)]*\)", r"\1", k) for k in ks))
                     for phase, ks in by_phase.items() if not phase.startswith("forward (")) or "n/a"


def _one_line(text: str) -> str:
    """Generated text inside one Markdown code span: line breaks shown as a return sign, backticks as quotes."""
    return " \u23ce ".join(line.strip() for line in text.strip().split("\n")).replace("`", "'")


def curve_gap(runs: dict, name: str, reference: str) -> float | None:
    """The largest |loss - reference loss| over the steps both ran."""
    a, b = runs[name].get("losses"), runs[reference].get("losses")
    if not a or not b:
        return None
    return max(abs(x - y) for x, y in zip(a, b))


def markdown(result: dict) -> str:
    s, runs, ref = result["settings"], result["runs"], result["reference"]
    lines = ["# Attention implementations compared", "",
             f"{s['model']} on {s['dataset']}; {s['device']}, {s['processes']} process(es), precision "
             f"{s['precision']}; seq {s['seq_len']}, global batch {s['global_batch']}, {s['steps']} steps, "
             f"{'packed' if s['packing'] else 'padded'} rows; seed {s['seed']}.", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in s["versions"].items()), "",
             "## Training (same data, seed and order)", "",
             f"| implementation | status | final loss | largest loss gap to {ref} over the curve | train tokens/s | "
             "peak memory MiB | perplexity of its own model | kernels that ran (forward; backward) |",
             "|---" * 8 + "|"]
    for name, r in runs.items():
        if r["status"] != "ran":
            lines.append(f"| {name} | {r['status']}: {r['why']} |" + " |" * 6)
            continue
        gap = curve_gap(runs, name, ref)
        lines.append(f"| {name} | ran | {r['final_loss']:.4f} | {gap:.2e} | {r['train_tokens_per_s'] or 0:.0f} | "
                     f"{_mib(r['train_peak_bytes'])} | {r['own_perplexity']:.3f} | {_kernels(r['kernels'])} |")
    ev = result["evaluation"]
    lines += ["", f"## Evaluation of the `{ref}`-trained model with each implementation", "",
              format_table(ev), "", "## Greedy generations (eager)", ""]
    lines += [f"- `{_one_line(p)}` -> `{_one_line(g)}`" for p, g in zip(ev["prompts"], ev["eager_generations"])]
    if not s["device"].startswith("cpu"):
        memory = "Peak memory: the CUDA allocator's peak during the phase."
    else:
        memory = ("Peak memory on the CPU: the process's peak resident set (VmHWM, reset before each phase); it "
                  "includes Python, torch and what the allocator kept from earlier phases.")
    lines += ["", memory, "", "![loss curves](loss_curves.png)", "", "![speed and memory](speed_memory.png)", ""]
    return "\n".join(lines)


def plot(result: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    runs, ref = result["runs"], result["reference"]
    ran = [n for n, r in runs.items() if r["status"] == "ran"]
    fig, (ax, gap) = plt.subplots(1, 2, figsize=(13, 4.5))
    styles = ["-", "--", ":", "-."]
    for i, name in enumerate(ran):  # the curves lie on top of each other when they agree: vary the dashes
        losses, style = runs[name]["losses"], styles[i % len(styles)]
        ax.plot(range(1, len(losses) + 1), losses, style, label=name, linewidth=1.2)
        diff = [x - y for x, y in zip(losses, runs[ref]["losses"])]
        gap.plot(range(1, len(diff) + 1), diff, style, label=name, linewidth=1.2)
    ax.set(title="training loss", xlabel="step", ylabel="loss")
    gap.set(title=f"loss minus {ref}'s loss", xlabel="step", ylabel="difference")
    ax.legend()
    gap.legend()
    fig.tight_layout()
    fig.savefig(out / "loss_curves.png", dpi=110)
    plt.close(fig)

    rows = {r["name"]: r for r in result["evaluation"]["rows"] if r["status"] == "ran"}
    panels = [("train tokens/s", [runs[n]["train_tokens_per_s"] or 0 for n in ran]),
              ("train peak memory MiB", [(runs[n]["train_peak_bytes"] or 0) / 2**20 for n in ran]),
              ("forward tokens/s (evaluation)", [rows.get(n, {}).get("forward_tokens_per_s", 0) for n in ran]),
              ("forward peak memory MiB", [(rows.get(n, {}).get("forward_peak_bytes") or 0) / 2**20 for n in ran])]
    fig, axes = plt.subplots(2, 2, figsize=(13, 7))
    for a, (title, values) in zip(axes.flat, panels):
        bars = a.bar(ran, values, color="tab:blue")
        a.bar_label(bars, fmt="%.0f", fontsize=8)
        a.set_title(title)
        a.tick_params(axis="x", rotation=20)
    fig.suptitle(f"{result['settings']['model']} on {result['settings']['device']}")
    fig.tight_layout()
    fig.savefig(out / "speed_memory.png", dpi=110)
    plt.close(fig)


def write(result: dict, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "report.md").write_text(markdown(result))
    plot(result, out)
    return out

