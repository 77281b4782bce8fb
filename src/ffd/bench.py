"""Benchmark the seed recipe: ``make bench`` (= ``python -m ffd.bench``).

Trains the seed recipe on the CIPLAB-sized synthetic set along ffd's naive and
default paths, measures predict throughput, and writes ``bench.json`` and
``bench.md`` under ``outputs/bench/<date_time>/`` (see ``ffd.runs.bench``);
``--scaling`` measures instead how the cost grows with the data (``ffd.runs.scaling``).
Absolute times vary between machines: compare the ratios.
"""

from __future__ import annotations

import argparse
import logging
from datetime import datetime
from pathlib import Path

from ffd.runs.bench import bench, bench_predict
from ffd.runs.scaling import FACTORS, scale_bench
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
        "--naive-epochs", type=int, metavar="N",
        help="train the naive path N epochs only; its wall time is extrapolated to the recipe's",
    )  # fmt: skip
    parser.add_argument(
        "--naive-from", type=Path, metavar="BENCH_DIR",
        help="take the naive run from an earlier bench on this machine (its bench.json) instead of running",
    )  # fmt: skip
    parser.add_argument(
        "--predict-only", type=Path, metavar="RUN_DIR", help="only inference (predict, service) of a run"
    )
    parser.add_argument(
        "--scaling", type=int, nargs="*", metavar="FACTOR",
        help=f"only the cost at FACTOR x CIPLAB's size (default {' '.join(map(str, FACTORS))})",
    )  # fmt: skip
    parser.add_argument(
        "--override", action="append", default=[], metavar="KEY=VALUE",
        help="a training setting for the --scaling runs (repeatable), e.g. data.views=1",
    )  # fmt: skip
    parser.add_argument(
        "--peer-keras", type=Path, metavar="VENV",
        help="also run bench/keras_peer.py (the recipe in Keras/TensorFlow) with VENV's python",
    )  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[bench] %(message)s")
    tune_malloc()
    if args.predict_only:
        bench_predict(args.predict_only, args.out)
    elif args.scaling is not None:
        scale_bench(args.out, tuple(args.scaling) or FACTORS, args.override)
    else:
        bench(args.out, args.skip_naive, args.seeds, args.peer_keras, args.naive_epochs, args.naive_from)


if __name__ == "__main__":
    main()
