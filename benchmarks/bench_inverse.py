"""Inverse problems on the shipped digits model: see diffsolve/bench/inverse.py (issue 21, docs/restoration.md).

python benchmarks/bench_inverse.py            # resumable; results in benchmarks/results/inverse.jsonl
python benchmarks/bench_inverse.py --report   # table and figures (docs/images) from what is there
"""

import sys

from diffsolve.bench.inverse import main

if __name__ == "__main__":
    sys.exit(main())
