# Session 36: what the generator costs a mask of 4.9M values drawn each way. Run: .venv/bin/python <this file>
import time, torch
n = 16*12*160*160
def t(name, fn, k=10):
    fn(); s=time.perf_counter()
    for _ in range(k): fn()
    print(f"{name:40s} {(time.perf_counter()-s)/k*1e3:7.2f} ms")
t("rand fp32", lambda: torch.rand(n))
t("empty bf16 bernoulli_(0.9)", lambda: torch.empty(n, dtype=torch.bfloat16).bernoulli_(0.9))
t("empty fp32 bernoulli_(0.9)", lambda: torch.empty(n).bernoulli_(0.9))
t("empty bool bernoulli_(0.9)", lambda: torch.empty(n, dtype=torch.bool).bernoulli_(0.9))
t("int32 random_()", lambda: torch.empty(n, dtype=torch.int32).random_())
t("int32 random_() n/2", lambda: torch.empty(n//2, dtype=torch.int32).random_())
t("int64 random_() n/4", lambda: torch.empty(n//4, dtype=torch.int64).random_())
t("uint8 random_()", lambda: torch.empty(n, dtype=torch.uint8).random_())
t("randint 0..65536 int32", lambda: torch.randint(0, 65536, (n,), dtype=torch.int32))
t("rand fp32 n/2", lambda: torch.rand(n//2))
x=torch.rand(n)
t("ge on fp32", lambda: x >= 0.1)
print(torch.get_num_threads())
