"""NFE-vs-quality benchmark suite: ``diffsolve bench`` (see docs/benchmarks.md).

Parts, one module each:

* :mod:`.catalog` (by name) and :mod:`.problems` (the classes): analytic mixtures (exact eps), the shipped spiral MLP (:mod:`.toy`), the
  shipped digits UNet (:mod:`.digits`, FDD and class coverage) and user models from
  ``pkg.module:factory``;
* :mod:`.pictures`: solver x NFE pictures of the digits model (``make demo``);
* :mod:`.reference`: high-accuracy reference solutions, convergence-checked and cached on disk;
* :mod:`.harness`: cells (problem x solver x grid x NFE x seed), metrics, resumable storage
  (:mod:`.store`), sharding under torchrun (:mod:`.dist`);
* :mod:`.peers`: diffusers' schedulers and k-diffusion's samplers on the same problem and x_T;
* :mod:`.overhead`: per-step overhead side by side with a zero-cost model;
* :mod:`.report`: CSV, JSON, markdown and PNG reports.
"""

from .catalog import bench_problem_names, get_bench_problem, load_model_problem
from .errors import BenchError
from .harness import DEFAULTS, ROW_FIELDS, TIMING_FIELDS, BenchResult, SolverSpec, parse_solver, run_bench
from .problems import AnalyticProblem, BenchProblem, ModelProblem, sliced_wasserstein

__all__ = [
    "run_bench",
    "BenchResult",
    "BenchError",
    "SolverSpec",
    "parse_solver",
    "BenchProblem",
    "AnalyticProblem",
    "ModelProblem",
    "get_bench_problem",
    "bench_problem_names",
    "load_model_problem",
    "sliced_wasserstein",
    "DEFAULTS",
    "ROW_FIELDS",
    "TIMING_FIELDS",
]
