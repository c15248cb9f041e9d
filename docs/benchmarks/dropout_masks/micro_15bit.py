# Session 36: the 15-bit threshold mask (trainer/dropout.py) against F.dropout and float32 uniforms,
# forward and backward; each 16-bit lane of an int64 random_() draw. Run: .venv/bin/python <this file>
import time, torch, torch.nn.functional as F
p=0.1
def native(x): return F.dropout(x, p, True)
def unif32(x):
    keep = torch.rand(x.shape, dtype=torch.float32) >= p
    return x * keep.to(x.dtype).mul_(1/(1-p))
L=1<<15
def bits15(x):
    d=round(p*L); n=x.numel()
    draws=torch.empty((n+3)//4, dtype=torch.int64).random_()
    keep=(draws.view(torch.int16)[:n].view(x.shape) & (L-1)) >= d
    return x * keep.to(x.dtype).mul_(1/(1-d/L))
shapes={"hidden":(16,160,768),"probs":(16,12,160,160)}
for dt in (torch.bfloat16, torch.float32):
  for name,s in shapes.items():
    res={}
    for rep in range(2):
     for fn in (native,unif32,bits15):
        x=torch.randn(s,dtype=dt,requires_grad=True)
        g=torch.randn(s,dtype=dt)
        for _ in range(2): fn(x).backward(g)
        t=time.perf_counter(); n=15
        for _ in range(n):
            y=fn(x); y.backward(g)
        res.setdefault(fn.__name__,[]).append(round((time.perf_counter()-t)/n*1e3,2))
    print(dt, name, res)
d=torch.empty(2_000_000,dtype=torch.int64).random_().view(torch.int16)
b=d.view(-1,4)
for lane in range(4):
    v=b[:,lane].to(torch.int32)&0x7FFF
    print("lane",lane,"mean/32767",round(v.float().mean().item()/32767,4),"bit14 share",round(((v>>14)&1).float().mean().item(),4), "sign share", round((b[:,lane]<0).float().mean().item(),4))
x=torch.ones(8_000_000)
print("keep", (bits15(x)!=0).float().mean().item(), "mean", bits15(x).mean().item())
