"""Score the parameter mean of published versions on dev without adapting anchors (session 23's looks).

    python docs/runs/average_look.py DATASET V1,V2[,...] [--head-of V] [...more version lists]

Each VERSION is a folder of /root/erc-runs/store or of models/. The encoders are averaged; the head
and anchors are either averaged too (default) or taken from one version (--head-of). Dev is scored
in fp32 on the CPU, as `erc-train evaluate` does; nothing is published. `fit --init-from V1 --init-from
V2 --epochs 0` is the real path (anchors adapted to the mean): this only shows whether the mean works.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from erc_stream.model import load_predictor
from trainer.datasets import DATASETS, load_split
from trainer.evaluate import compute_metrics, predict_conversations

STORES = (Path("/root/erc-runs/store"), Path(__file__).resolve().parents[2] / "models")


def folder(name: str) -> Path:
    for store in STORES:
        if (store / name / "manifest.json").is_file():
            return store / name
    raise SystemExit(f"{name}: not a version in {', '.join(map(str, STORES))}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("specs", nargs="+", help="comma-separated version names, one mean each")
    ap.add_argument("--head-of", help="take head and anchors from this version (one of the spec's) instead")
    args = ap.parse_args()
    convs = load_split(args.dataset, "dev", None)
    labels = list(DATASETS[args.dataset].labels)
    for spec in args.specs:
        names = spec.split(",")
        preds = [load_predictor(folder(n), device="cpu", dtype="fp32") for n in names]
        target = preds[names.index(args.head_of)] if args.head_of else preds[0]
        parts = ("encoder",) if args.head_of else ("encoder", "head")
        for part in parts:
            states = [getattr(p.model, part).state_dict() for p in preds]
            mean = {k: sum(s[k].float() for s in states) / len(states) for k in states[0]}
            getattr(target.model, part).load_state_dict(mean)
        if not args.head_of:
            target.model.anchors.data = sum(p.model.anchors.data for p in preds) / len(preds)
        res = predict_conversations(target, convs, batch_size=64)
        m = compute_metrics(res.gold, res.predictions.label_ids.tolist(), labels, DATASETS[args.dataset].neutral_label)
        head = f"head and anchors of {args.head_of}" if args.head_of else "mean head and anchors"
        print(f"{spec} ({head}): weighted F1 {m['weighted_f1']:.4f}, macro F1 {m['macro_f1']:.4f}", flush=True)


if __name__ == "__main__":
    main()
