"""Session 15's scratch probe of 8-bit storage variants on a published version (docs/results.md,
"Session 15"): scores MELD/EmoryNLP dev in fp32 with the stored weights, then with each variant's
rounding applied in memory, and prints weighted/macro F1, agreement and the largest score change.

    .venv/bin/python docs/runs/int8_probe.py /root/erc-runs/store/meld-mpnet-w2 row,block:128,block:32
    .venv/bin/python docs/runs/int8_probe.py /root/erc-runs/store/meld-mpnet-w2 block:16,mix:32

Variants: row (a scale per row), block:B (a scale per B values), mix:B (block:B with the FFN output
projections and the position table kept in fp16, chosen by name). The shipped format
(erc_stream/int8.py: blocks of 32, matrices over 40 standard deviations in fp16) was measured
with `erc-train repack` instead. Not part of the package; kept as the command behind the figures.
"""
import sys, time, torch, numpy as np
from pathlib import Path
from erc_stream.model import Predictor
from trainer.datasets import DATASETS, load_split
from trainer.evaluate import compute_metrics, build_examples, predict_examples

vdir = Path(sys.argv[1]); variants = sys.argv[2].split(",")
p = Predictor.load(vdir, device="cpu", dtype="fp32")
spec = DATASETS[p.manifest["dataset"]]
convs = load_split(p.manifest["dataset"], "dev", None)
label_id = {l: i for i, l in enumerate(p.labels)}
ex = build_examples(p.builder, convs, label_id); gold = [y for _, y in ex]
orig = {k: v.clone() for k, v in p.model.encoder.state_dict().items()}

def q(w, block):
    R, C = w.shape
    b = C if block == 0 else block
    wg = w.float().reshape(R, C // b, b)
    s = wg.abs().amax(-1, keepdim=True) / 127
    s = torch.where(s > 0, s, torch.ones_like(s))
    return (torch.round(wg / s).clamp(-127, 127) * s).reshape(R, C)

def run(tag):
    t = time.time()
    pr = predict_examples(p, ex, batch_size=64, progress=False, desc=tag)
    m = compute_metrics(gold, pr.label_ids.tolist(), p.labels, spec.neutral_label)
    print(f"{tag}: wF1 {m['weighted_f1']:.4f} macro {m['macro_f1']:.4f} ({time.time()-t:.0f}s)", flush=True)
    return pr
base = run("fp32")
for v in variants:
    kind, _, arg = v.partition(":")
    st = {}
    errs = []
    for k, w in orig.items():
        if w.is_floating_point() and w.ndim == 2 and w.numel() >= 4096:
            keep16 = (kind == "rowemb16" and "embeddings" in k) or (kind == "mix" and ("output.dense" in k and "attention" not in k or "position_embeddings" in k))
            block = int(arg or 0)
            if keep16:
                wq = w.half().float()
            else:
                wq = q(w, block if w.shape[1] % max(block, 1) == 0 else 0)
            errs.append((((wq - w).norm() / w.norm()).item(), k))
            st[k] = wq
        else:
            st[k] = w
    p.model.encoder.load_state_dict(st)
    errs.sort(reverse=True)
    print(v, "worst rel err:", [(round(e, 4), k) for e, k in errs[:4]], flush=True)
    pr = run(v)
    agree = float((pr.label_ids == base.label_ids).mean())
    print(f"   agree {100*agree:.2f}%  max score diff {abs(pr.scores-base.scores).max():.3e}", flush=True)
