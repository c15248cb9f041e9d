# Session 36: a dropout mask drawn as torch.rand (float32 or bf16) against p, against F.dropout, forward and
# backward, on shapes of a training step; and the kept share of bf16 uniforms. Run: .venv/bin/python <this file>
import time, torch, torch.nn.functional as F
torch.manual_seed(0)
p=0.1
def native(x): return F.dropout(x, p, True)
def unif(x):
    keep = torch.rand_like(x) >= p
    return x * keep.to(x.dtype).mul_(1/(1-p))
def unif32(x):
    keep = torch.rand(x.shape, dtype=torch.float32) >= p
    return x * keep.to(x.dtype).mul_(1/(1-p))
def where(x):
    keep = torch.rand_like(x) >= p
    return torch.where(keep, x*(1/(1-p)), 0.0)
shapes={"hidden":(16,160,768),"probs":(16,12,160,160),"ffn":(16,160,3072)}
for dt in (torch.bfloat16, torch.float32):
  for name,s in shapes.items():
    res={}
    for fn in (native,unif,unif32,where):
        x=torch.randn(s,dtype=dt,requires_grad=True)
        g=torch.randn(s,dtype=dt)
        for _ in range(3): fn(x).backward(g)
        t=time.perf_counter(); n=20
        for _ in range(n):
            y=fn(x); y.backward(g)
        res[fn.__name__]=(time.perf_counter()-t)/n*1e3
    print(dt, name, {k: round(v,2) for k,v in res.items()})
x=torch.ones(2_000_000,dtype=torch.bfloat16)
print("keep frac native", (F.dropout(x,p,True)!=0).float().mean().item(), "unif", (unif(x)!=0).float().mean().item(), "mean", unif(x).float().mean().item())
