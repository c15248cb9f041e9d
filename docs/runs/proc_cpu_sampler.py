"""Every 10 s: cumulative CPU seconds of every process (and of each thread of `erc-stream demo`),
plus the machine's /proc/stat ticks, as JSON lines. Written in session 31 to see where a `make demo`
run's CPU time goes (docs/results.md, "Session 31"); differences between two lines give the shares.

    nohup python3 docs/runs/proc_cpu_sampler.py /root/s31/cpu1.jsonl > /dev/null 2>&1 &
"""
import json, os, sys, time
HZ = os.sysconf("SC_CLK_TCK")
def stat(path):
    try:
        s = open(path).read()
    except OSError:
        return None
    name = s[s.index("(") + 1 : s.rindex(")")]
    f = s[s.rindex(")") + 2 :].split()
    return name, (int(f[11]) + int(f[12])) / HZ
out = open(sys.argv[1], "a")
while True:
    row = {"t": time.time(), "procs": {}, "threads": {}}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        st = stat(f"/proc/{pid}/stat")
        if st is None or st[1] < 0.5:
            continue
        try:
            cmd = open(f"/proc/{pid}/cmdline").read().replace("\0", " ")[:120]
        except OSError:
            cmd = st[0]
        row["procs"][pid] = [cmd, st[1]]
        if "erc-stream demo" in cmd:
            for tid in os.listdir(f"/proc/{pid}/task"):
                ts = stat(f"/proc/{pid}/task/{tid}/stat")
                if ts and ts[1] > 0.2:
                    row["threads"][tid] = [ts[0], ts[1]]
    cpu = open("/proc/stat").readline().split()[1:]
    row["cpu"] = [int(x) for x in cpu]
    out.write(json.dumps(row) + "\n"); out.flush()
    time.sleep(10)
