# Session 36: a fresh 94 MB torch.zeros (and a 19.7 MB one): time and minor page faults a call. Run it
# plain and with THP_MEM_ALLOC_ENABLE=1: .venv/bin/python docs/benchmarks/allocator/fresh_zeros.py
import time, torch, resource
def t(name, fn, k=10):
    fn(); r0=resource.getrusage(resource.RUSAGE_SELF).ru_minflt; s=time.perf_counter()
    for _ in range(k): fn()
    dt=(time.perf_counter()-s)/k*1e3; r1=resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    print(f"{name:40s} {dt:7.2f} ms  minor faults/call {(r1-r0)/k:.0f}")
t("zeros(30527,768) fresh", lambda: torch.zeros(30527,768))
t("zeros(16,12,160,160) fresh", lambda: torch.zeros(16,12,160,160))
