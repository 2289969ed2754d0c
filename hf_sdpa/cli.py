"""The `hf-sdpa` command: `doctor` and `trace`."""
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


def _trace(args):
    """Forward, backward and generate() on a model with each implementation, each under hf_sdpa.trace."""
    import torch
    from transformers import AutoModelForCausalLM
    from .errors import AttentionRefused
    from .presets import embedded_model, is_embedded
    from .trace import trace
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device == "cuda" else "float32"))
    if is_embedded(args.model):
        model = embedded_model(args.model, "eager", args.seq + args.new_tokens)
    else:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
    model.to(device=device, dtype=dtype)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (args.batch, args.seq), generator=gen).to(device)
    mask = torch.ones_like(ids)
    if args.padding:  # left padding, growing down the batch: row i keeps 1 - i * padding / batch of its tokens
        for row in range(args.batch):
            mask[row, : int(args.seq * args.padding * row / args.batch)] = 0
    def work():
        model.train()
        model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss.backward()
        model.eval()
        with torch.no_grad():
            model.generate(ids, attention_mask=mask, max_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)

    rows, refused = [], {}
    for name in args.attn.split(","):
        try:
            model.set_attn_implementation(name)
            work()  # once untraced, so that compilation and cuDNN plan building are not timed
            with trace() as t:
                work()
        except (AttentionRefused, ValueError) as exc:
            refused[name] = " ".join(str(exc).split())
            continue
        model.zero_grad(set_to_none=True)
        rows += t.summary()
    if args.json:
        print(json.dumps({"rows": rows, "refused": refused}, indent=1))
        return
    print(f"{args.model}, {device}, {str(dtype).removeprefix('torch.')}, batch {args.batch} x {args.seq}, "
          f"{'left padding ' + str(args.padding) if args.padding else 'no padding'}: a training step "
          f"(forward + backward) and generate({args.new_tokens} tokens)\n")
    print("| implementation | phase | kernel | backend | calls | ms |\n" + "|---" * 6 + "|")
    for r in rows:
        print(f"| {r['implementation']} | {r['phase']} | {r['kernel']} | {r['backend']} | {r['calls']} | "
              f"{r['ms']:.2f} |")
    for name, why in refused.items():
        print(f"\n{name} refused: {why}")


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
    tr = sub.add_parser("trace", help="which attention kernels each implementation really runs on a model")
    tr.add_argument("--model", default="embedded", help="hub id or path, or embedded[:tiny|small|100m]")
    tr.add_argument("--attn", default="eager,sdpa," + ",".join(hf_sdpa.NAMES))
    tr.add_argument("--batch", type=int, default=4)
    tr.add_argument("--seq", type=int, default=128)
    tr.add_argument("--padding", type=float, default=0.0,
                    help="left padding: the last row loses about this fraction of its tokens (0: none)")
    tr.add_argument("--new-tokens", type=int, default=4)
    tr.add_argument("--device", default=None)
    tr.add_argument("--dtype", default=None, choices=["float16", "bfloat16", "float32"])
    tr.add_argument("--json", action="store_true")
    tr.set_defaults(func=_trace)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
