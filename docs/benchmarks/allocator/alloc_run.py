# Session 36: one allocator run of rusage.txt (bench_freeze.py in-process, then getrusage); NAME names the
# files; the environment (LD_PRELOAD, GLIBC_TUNABLES, MALLOC_CONF, THP_MEM_ALLOC_ENABLE) is set by the caller.
import sys, resource, time
sys.path.insert(0, "benchmarks")
import bench_freeze
name = sys.argv[1]
sys.argv = ["benchmarks/bench_freeze.py", "--encoder", "mpnet-base", "--freeze", "0,6", "--dtypes", "bf16", "--steps", "6", "--out-dir", "/tmp/alloc", "--name", name]
bench_freeze.main()
r = resource.getrusage(resource.RUSAGE_SELF)
print("RUSAGE", name, "minflt", r.ru_minflt, "sys_s", round(r.ru_stime, 1), "user_s", round(r.ru_utime, 1))
