"""Compare fine-tuning runs of the same global batch on different process counts (recipes/finetune.py output
folders): for every implementation in all of them, the largest loss gap to the first run, tokens/s, the
scaling efficiency (tokens/s / (processes x the first run's tokens/s per process)) and peak memory per process.

    python benchmarks/scaling.py one=runs/one ddp=runs/ddp fsdp=runs/fsdp --out runs/scaling

Writes scaling.json, scaling.md and scaling.png (per implementation, each run's loss minus the first run's, step
by step) under --out and prints the table.
"""
import argparse
import json
from pathlib import Path


def load(folder: Path) -> dict:
    """{implementation: (result.json, losses)} of one finetune.py output folder."""
    runs = {}
    for result in sorted(folder.glob("*/result.json")):
        losses = [json.loads(line)["loss"] for line in (result.parent / "metrics.jsonl").read_text().splitlines()]
        runs[result.parent.name] = (json.loads(result.read_text()), losses)
    return runs


def compare(folders: dict) -> list:
    labels = list(folders)
    runs = {label: load(Path(folder)) for label, folder in folders.items()}
    base = labels[0]
    rows = []
    for name in sorted(set.intersection(*(set(r) for r in runs.values()))):
        ref_result, ref_losses = runs[base][name]
        ref_rate = (ref_result["train_tokens_per_s"] or 0) / ref_result["processes"]
        for label in labels:
            result, losses = runs[label][name]
            rate = result["train_tokens_per_s"] or 0
            rows.append({
                "implementation": name, "run": label, "processes": result["processes"],
                "global_batch": result["global_batch"], "steps": len(losses),
                "largest_loss_gap": max(abs(a - b) for a, b in zip(losses, ref_losses)),
                "tokens_per_s": rate,
                "scaling_efficiency": rate / (result["processes"] * ref_rate) if ref_rate else None,
                "peak_bytes_per_process": result["train_peak_bytes"],
            })
    return rows


def markdown(rows: list, base: str) -> str:
    lines = [f"| implementation | run | processes | global batch | largest loss gap to `{base}` | tokens/s | "
             "scaling efficiency | peak memory per process (MiB) |", "|---" * 8 + "|"]
    for r in rows:
        eff = f"{100 * r['scaling_efficiency']:.0f}%" if r["scaling_efficiency"] is not None else "n/a"
        mem = f"{r['peak_bytes_per_process'] / 2**20:.0f}" if r["peak_bytes_per_process"] else "n/a"
        lines.append(f"| {r['implementation']} | {r['run']} | {r['processes']} | {r['global_batch']} | "
                     f"{r['largest_loss_gap']:.2e} | {r['tokens_per_s']:.0f} | {eff} | {mem} |")
    return "\n".join(lines) + "\n"


def plot(folders: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    runs = {label: load(Path(folder)) for label, folder in folders.items()}
    labels, base = list(runs), next(iter(runs))
    names = sorted(set.intersection(*(set(r) for r in runs.values())))
    cols = min(3, len(names))
    fig, axes = plt.subplots(-(-len(names) // cols), cols, figsize=(4.5 * cols, 3.2 * -(-len(names) // cols)),
                             squeeze=False, sharey=True)
    for ax, name in zip(axes.flat, names):
        ref = runs[base][name][1]
        for label in labels[1:]:
            losses = runs[label][name][1]
            ax.plot(range(1, len(losses) + 1), [a - b for a, b in zip(losses, ref)], label=label, linewidth=1)
        ax.set(title=name, xlabel="step", ylabel=f"loss minus {base}'s")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(out / "scaling.png", dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="LABEL=FOLDER, the first is the reference")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    folders = dict(run.split("=", 1) for run in args.runs)
    rows = compare(folders)
    if not rows:
        raise SystemExit("no implementation appears in every folder; give finetune.py output folders")
    table = markdown(rows, next(iter(folders)))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "scaling.json").write_text(json.dumps(rows, indent=1))
        (out / "scaling.md").write_text(table)
        plot(folders, out)
    print(table)


if __name__ == "__main__":
    main()
