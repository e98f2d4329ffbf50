"""Time ds.tune on gmm64 at NFE 5 with 256 fit samples, one torch thread, and check it is reproducible.

python benchmarks/time_tune.py
"""

import time

import torch

torch.set_num_threads(1)
import diffsolve as ds
from diffsolve.bench.catalog import get_bench_problem

p = get_bench_problem("gmm64")
ode = p.ode(p.dtype)
x = p.x_T(1000, 512)
c0 = time.process_time()
t0 = time.perf_counter()
r = ds.tune(ode, x, nfe=5, progress=False)
print(
    f"wall {time.perf_counter() - t0:.1f} s, process CPU {time.process_time() - c0:.1f} s, "
    f"model calls {r.report['tuning_model_calls']} (teacher {r.report['teacher_model_calls']}), runs {r.report['sampler_runs']}"
)
print(r, r.report["heldout_rmse"], r.report["best_fixed"]["heldout_rmse"])
r2 = ds.tune(ode, x, nfe=5, progress=False)
a, b = r.to_dict(), r2.to_dict()
for d in (a, b):
    for k in ("seconds", "tuning_model_calls", "teacher_model_calls"):
        d["report"].pop(k)
print("same recipe bit for bit:", a == b)
