"""What Nsight Compute's CSV pages say, short: per profile in a folder (gpu_ncu.sh's NAME.details.csv,
NAME.raw.csv and NAME.sass.csv), the kernels' main metrics, how busy each pipe was, the warp-stall samples summed
over the kernel by reason, and the SASS instructions that collect the most samples.

    python benchmarks/ncu_summary.py FOLDER [--top 40]
"""
import argparse
import csv
import glob
import os

# The details page's metrics worth reading first, named as ncu prints them.
KEY_METRICS = ("Duration", "Elapsed Cycles", "SM Frequency", "Compute (SM) Throughput", "Memory Throughput",
               "Registers Per Thread", "Grid Size", "Block Size", "Dynamic Shared Memory Per Block",
               "Executed Ipc Active", "Issue Slots Busy", "Issued Warp Per Scheduler", "No Eligible",
               "Active Warps Per Scheduler", "Eligible Warps Per Scheduler", "Warp Cycles Per Issued Instruction",
               "Achieved Occupancy", "L2 Hit Rate", "DRAM Throughput", "Executed Instructions")


def rows_after_header(path, first_column):
    """The CSV's rows as dicts, from the header row whose first cell is first_column (ncu may print lines before)."""
    with open(path, newline="") as f:
        lines = list(csv.reader(f))
    for i, line in enumerate(lines):
        if line and line[0].strip().lstrip("#").strip() == first_column:
            header = line
            # rows without a rule end early: their missing cells read as empty
            return [dict(zip(header, r + [""] * (len(header) - len(r)))) for r in lines[i + 1:] if r]
    return []


def number(text):
    try:
        return float(text.replace(",", ""))
    except (AttributeError, ValueError):
        return None


def details(path):
    rows = rows_after_header(path, "ID")
    out = []
    for kernel in dict.fromkeys(r["Kernel Name"] for r in rows):
        out.append(f"kernel {kernel[:100]}")
        mine = [r for r in rows if r["Kernel Name"] == kernel]
        for name in KEY_METRICS:
            out += [f"  {r['Section Name']} / {name}: {r['Metric Value']} {r['Metric Unit']}"
                    for r in mine if r["Metric Name"] == name]
        out += [f"  pipe {r['Metric Name']}: {r['Metric Value']} {r['Metric Unit']}"
                for r in mine if "Pipe" in r["Metric Name"] or "Tensor" in r["Metric Name"]]
    return out


def pipes(path):
    """From the raw page (NAME.raw.csv): per kernel, how busy each pipe was, in % of its peak while the SM was active
    (the MUFU is 'xu', the warpgroup MMAs 'tensor_op_gmma' among the instructions and 'tensor' among the cycles),
    and the issue slots' share."""
    with open(path, newline="") as f:
        lines = list(csv.reader(f))
    start = next((i for i, line in enumerate(lines) if line and line[0].strip('"') == "ID"), None)
    if start is None:
        return [f"  (no rows in {os.path.basename(path)})"]
    header = lines[start]
    out = []
    for line in lines[start + 2:]:  # the row after the header holds the units
        row = dict(zip(header, line))
        busy = [(name.split("__", 1)[1].split(".")[0], number(value)) for name, value in row.items()
                if name.endswith(".avg.pct_of_peak_sustained_active") and ("pipe" in name or "issue_active" in name)]
        busy = sorted((v, n) for n, v in busy if v)
        out.append(f"kernel {row.get('Kernel Name', '?')[:100]} (% of peak, SM active):")
        out += [f"  {n}: {v:.1f}" for v, n in reversed(busy)]
    return out


def source(path, top):
    rows = rows_after_header(path, "Address")
    if not rows:
        return [f"  (no SASS rows in {os.path.basename(path)})"]
    columns = list(rows[0])
    sampled = next((c for c in columns if c.startswith("Warp Stall Sampling (All")), None)
    numeric = [c for c in columns if c not in ("Address", "Source") and all(number(r[c]) is not None for r in rows)]
    totals = {c: sum(number(r[c]) for r in rows) for c in numeric}
    out = [f"  {len(rows)} SASS instructions; totals:"]
    out += [f"    {c}: {v:.0f}" for c, v in sorted(totals.items(), key=lambda kv: -kv[1]) if v]
    if sampled:
        reasons = [c for c in numeric if c != sampled and "stall" in c.lower()]
        out.append(f"  top {top} by {sampled}:")
        for r in sorted(rows, key=lambda r: -number(r[sampled]))[:top]:
            why = sorted(((number(r[c]), c) for c in reasons if number(r[c])), reverse=True)[:3]
            out.append(f"    {r['Address']} {number(r[sampled]):7.0f}  {r['Source'][:60]:60s} "
                       + ", ".join(f"{c} {v:.0f}" for v, c in why))
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("folder")
    p.add_argument("--top", type=int, default=40)
    a = p.parse_args()
    for path in sorted(glob.glob(os.path.join(a.folder, "*.details.csv"))):
        name = os.path.basename(path).removesuffix(".details.csv")
        print(f"== {name}")
        print("\n".join(details(path)))
        raw = os.path.join(a.folder, f"{name}.raw.csv")
        if os.path.exists(raw):
            print("\n".join(pipes(raw)))
        sass = os.path.join(a.folder, f"{name}.sass.csv")
        if os.path.exists(sass):
            print("\n".join(source(sass, a.top)))
        print()


if __name__ == "__main__":
    main()
