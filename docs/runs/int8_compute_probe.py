"""Session 30's probe: can the served model *compute* in 8 bits on a CPU without native bf16?

docs/benchmarks/README.md (finding 5) left dynamic int8 as "worth adding later, once a fully trained
model's margins are checked". This scores a published version on its dev split in fp32, then with
each variant, and prints weighted/macro F1, label agreement with fp32 and the largest score change:

    PYTHONPATH=. .venv/bin/python docs/runs/int8_compute_probe.py models/meld-mpnet-w3-s45 dyn_no_ffn_down,fake_token
    PYTHONPATH=. .venv/bin/python docs/runs/int8_compute_probe.py models/meld-mpnet-w3-s45 stats,kernels

Variants (applied to the encoder's nn.Linear layers but its unused pooler; the head stays fp32):
  dyn            torch.ao.quantization.quantize_dynamic on every Linear of the encoder (one
                 activation scale per batch, per-tensor weights); bench_model.py's int8 also
                 quantizes the head (and the unused pooler)
  dyn_no_ffn_down  the same, leaving the FFN down projections (layer.N.output.dense) in fp32
  fake_token     simulated: activations rounded to int8 with a scale per token, weights with a
                 scale per output row, then an fp32 matmul (accuracy only: PyTorch has no fast CPU
                 kernel for it here; torch._int_mm is about 60x slower than fp32 on this machine)
Looks (no dev scoring when only these are asked for):
  stats          per Linear of the encoder, the largest |input| over its standard deviation on
                 160 dev prompts (fp32), summarised per layer type
  kernels        one (4096 x 768) @ (768 x 3072) product, the FFN up shape: fp32 F.linear,
                 quantize_dynamic's int8 Linear, torch._int_mm, seconds each
Not part of the package; kept as the command behind the figures in docs/results.md ("Session 30").
"""

import copy
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from erc_stream.model import Predictor
from trainer.datasets import DATASETS, load_split
from trainer.evaluate import build_examples, compute_metrics, predict_examples

vdir = Path(sys.argv[1])
variants = sys.argv[2].split(",")
p = Predictor.load(vdir, device="cpu", dtype="fp32")
spec = DATASETS[p.manifest["dataset"]]
convs = load_split(p.manifest["dataset"], "dev", None)
ex = build_examples(p.builder, convs, {label: i for i, label in enumerate(p.labels)})
gold = [y for _, y in ex]
fp32_model = p.model


def run(tag):
    t = time.time()
    pr = predict_examples(p, ex, batch_size=64, progress=False, desc=tag)
    m = compute_metrics(gold, pr.label_ids.tolist(), p.labels, spec.neutral_label)
    print(f"{tag}: wF1 {m['weighted_f1']:.4f} macro {m['macro_f1']:.4f} ({time.time() - t:.0f} s)", flush=True)
    return pr


class FakeTokenInt8(torch.nn.Module):
    """A Linear whose input is rounded to int8 per token and weight per output row (fp32 compute)."""

    def __init__(self, lin: torch.nn.Linear) -> None:
        super().__init__()
        w = lin.weight.detach()
        s = (w.abs().amax(dim=1, keepdim=True) / 127).clamp_min(1e-12)  # (N, 1)
        self.weight = torch.round(w / s).clamp(-127, 127) * s
        self.bias = lin.bias

    def forward(self, x):
        s = (x.abs().amax(dim=-1, keepdim=True) / 127).clamp_min(1e-12)  # (..., 1) a scale per token
        return F.linear(torch.round(x / s).clamp(-127, 127) * s, self.weight, self.bias)


def variant(kind: str):
    m = copy.deepcopy(fp32_model)
    names = [n for n, mod in m.encoder.named_modules() if isinstance(mod, torch.nn.Linear) and "pooler" not in n]
    if kind == "dyn_no_ffn_down":
        names = [n for n in names if not (n.endswith("output.dense") and "attention" not in n)]
    if kind in ("dyn", "dyn_no_ffn_down"):
        from torch.ao.quantization import quantize_dynamic

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecated in favour of torchao
            quantize_dynamic(m.encoder, set(names), dtype=torch.qint8, inplace=True)
    elif kind == "fake_token":
        for n in names:
            parent, _, leaf = n.rpartition(".")
            owner = m.encoder.get_submodule(parent)
            setattr(owner, leaf, FakeTokenInt8(getattr(owner, leaf)))
    else:
        raise SystemExit(f"unknown variant {kind!r}")
    return m, len(names)


def stats() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    prompts = sorted((ex[i][0] for i in rng.choice(len(ex), 160, replace=False)), key=len)
    ratio: dict[str, float] = {}

    def hook(name):
        def f(mod, inp, out):
            x = inp[0].detach().float()
            ratio[name] = max(ratio.get(name, 0.0), (x.abs().amax() / x.std()).item())

        return f

    hooks = [
        m.register_forward_hook(hook(n))
        for n, m in fp32_model.encoder.named_modules()
        if isinstance(m, torch.nn.Linear)
    ]
    for start in range(0, len(prompts), 32):
        p.predict(prompts[start : start + 32])
    for h in hooks:
        h.remove()
    kinds: dict[str, list[float]] = {}
    for name, r in ratio.items():
        if ".layer." in name:
            kind = name.split(".layer.")[1].split(".", 1)[1]
            kinds.setdefault(kind, []).append(r)
    for kind, rs in kinds.items():
        print(f"stats {kind:24s} max|x| / std(x) over {len(rs)} layers: {min(rs):6.1f} .. {max(rs):6.1f}", flush=True)


def kernels() -> None:
    def seconds(f, n=5):
        f()
        t = time.perf_counter()
        for _ in range(n):
            f()
        return (time.perf_counter() - t) / n

    from torch.ao.quantization import quantize_dynamic

    a, lin = torch.randn(4096, 768), torch.nn.Linear(768, 3072)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qlin = quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear}, dtype=torch.qint8)
    ai = torch.randint(-127, 127, (4096, 768), dtype=torch.int8)
    wi = torch.randint(-127, 127, (768, 3072), dtype=torch.int8)
    with torch.inference_mode():
        t32 = seconds(lambda: lin(a))
        tq = seconds(lambda: qlin(a))
        ti = seconds(lambda: torch._int_mm(ai, wi), n=2)
    dyn = f"quantize_dynamic {tq:.4f} s ({t32 / tq:.2f}x)"
    print(f"kernels fp32 {t32:.4f} s, {dyn}, _int_mm {ti:.3f} s ({ti / t32:.0f}x slower)")


looks = {"stats": stats, "kernels": kernels}
for v in [v for v in variants if v in looks]:
    looks[v]()
variants = [v for v in variants if v not in looks]
base = run("fp32") if variants else None
for v in variants:
    p.model, count = variant(v)
    print(f"{v}: {count} Linear layers changed", flush=True)
    pr = run(v)
    agree = float((pr.label_ids == base.label_ids).mean())
    print(f"   agree {100 * agree:.2f}%  max score diff {abs(pr.scores - base.scores).max():.3f}", flush=True)
    p.model = fp32_model
