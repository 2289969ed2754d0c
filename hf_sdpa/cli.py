"""The `hf-sdpa` command: `doctor`."""
import argparse
import json


def _doctor(args):
    from .doctor import Case, format_report, report
    case = None
    if args.case or any(getattr(args, f) is not None for f in ("batch", "heads", "q_len", "head_dim", "mask")):
        defaults = Case()
        fields = {f: getattr(args, f) for f in defaults.__dataclass_fields__ if getattr(args, f, None) is not None}
        case = Case(**fields)
        if args.kv_heads is None:
            case.kv_heads = case.heads
        if args.kv_len is None:
            case.kv_len = case.q_len
    rep = report(case)
    print(json.dumps(rep, indent=2, default=str) if args.json else format_report(rep))


def main(argv=None):
    import hf_sdpa  # noqa: F401  registers the names
    parser = argparse.ArgumentParser(prog="hf-sdpa", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    doc = sub.add_parser("doctor", help="which attention implementations exist, are enabled, and run here")
    doc.add_argument("--case", action="store_true", help="also judge the case below (implied by any case option)")
    for flag, typ in [("batch", int), ("heads", int), ("kv-heads", int), ("q-len", int), ("kv-len", int),
                      ("head-dim", int), ("window", int), ("softcap", float), ("dropout", float)]:
        doc.add_argument(f"--{flag}", type=typ, default=None)
    doc.add_argument("--dtype", default=None, choices=["float16", "bfloat16", "float32", "float64"])
    doc.add_argument("--device", default=None)
    doc.add_argument("--mask", default=None, choices=["none", "causal", "padding", "sliding"])
    doc.add_argument("--backward", action="store_true", default=None)
    doc.add_argument("--json", action="store_true")
    doc.set_defaults(func=_doctor)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
