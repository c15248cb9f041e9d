# Session 36: which operators touch the word embeddings' (30527 x 768) gradient in 3 timed steps of an
# every-layer mpnet-base bf16 step (bench_freeze.py, profiled with input shapes). Run from the repo root:
#   .venv/bin/python docs/benchmarks/allocator/embedding_grad_profile.py
import contextlib
import io
import sys

import torch

sys.path.insert(0, "benchmarks")
orig = torch.profiler.profile
holder = {}


def prof(*a, **k):
    p = orig(*a, record_shapes=True, **k)
    holder["p"] = p
    return p


torch.profiler.profile = prof
import bench_freeze  # noqa: E402

sys.argv = ["x", "--encoder", "mpnet-base", "--freeze", "0", "--dtypes", "bf16", "--steps", "3", "--profile",
            "/tmp/f.txt", "--out-dir", "/tmp/p", "--name", "f"]
with contextlib.redirect_stdout(io.StringIO()):
    bench_freeze.main()
p = holder["p"]
ka = p.key_averages()
tot = sum(e.self_cpu_time_total for e in ka)
for e in ka:
    if e.key in ("aten::embedding_dense_backward",):
        print("SUM", e.key, e.count, "total ms", round(e.cpu_time_total / 1e3, 1))
big = [e for e in p.key_averages(group_by_input_shape=True) if e.input_shapes and e.input_shapes[0] == [30527, 768]]
for e in big:
    print(e.key, e.count, "self ms", round(e.self_cpu_time_total / 1e3, 1), e.input_shapes[:2])
print("total self ms (3 steps)", round(tot / 1e3))
