"""Compare fine-tuning runs of the same global batch on different process counts (recipes/finetune.py output
folders): for every implementation in all of them, the largest loss gap to the first run, tokens/s, the
scaling efficiency (tokens/s / (processes x the first run's tokens/s per process)) and peak memory per process.

    python benchmarks/scaling.py one=runs/one ddp=runs/ddp fsdp=runs/fsdp --out runs/scaling

Writes scaling.json and scaling.md under --out and prints the table.
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
    print(table)


if __name__ == "__main__":
    main()
