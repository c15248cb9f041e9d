# Session 36: minor faults and CPU seconds of a whole bench_freeze.py process (mpnet-base, every layer,
# bf16) with N timed steps; run with 1 and 5 from the repo root: .venv/bin/python docs/benchmarks/allocator/faults_per_step.py N
import sys, resource, time
sys.path.insert(0, "benchmarks")
import bench_freeze
steps = sys.argv[1]
sys.argv = ["x", "--encoder", "mpnet-base", "--freeze", "0", "--dtypes", "bf16", "--steps", steps, "--out-dir", "/tmp/p", "--name", "flt"]
t = time.perf_counter()
bench_freeze.main()
r = resource.getrusage(resource.RUSAGE_SELF)
print("STEPS", steps, "minflt", r.ru_minflt, "majflt", r.ru_majflt, "sys_s", round(r.ru_stime, 1), "user_s", round(r.ru_utime, 1), "wall", round(time.perf_counter() - t, 1))
