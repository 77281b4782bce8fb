"""Benchmark the seed recipe: ``make bench`` (= ``python -m ffd.bench``).

Trains the seed recipe on the CIPLAB-sized synthetic set along ffd's naive and
default paths, measures predict throughput, and writes ``bench.json`` and
``bench.md`` under ``outputs/bench/<date_time>/`` (see ``ffd.runs.bench``).
Absolute times vary between machines: compare the ratios.
"""

from __future__ import annotations

import argparse
import logging
from datetime import datetime
from pathlib import Path

from ffd.runs.bench import bench, bench_predict
from ffd.runtime import tune_malloc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    started = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench") / started)
    parser.add_argument("--skip-naive", action="store_true", help="only the fast path (no speed-up figure)")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds of the fast path (same split)")
    parser.add_argument(
        "--predict-only", type=Path, metavar="RUN_DIR", help="only inference (predict, service) of a run"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[bench] %(message)s")
    tune_malloc()
    if args.predict_only:
        bench_predict(args.predict_only, args.out)
    else:
        bench(args.out, args.skip_naive, args.seeds)


if __name__ == "__main__":
    main()
