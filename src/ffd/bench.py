"""Benchmark ffd on this machine: ``python -m ffd.bench`` (= ``make bench``; see ``conf/bench.yaml``).

``mode=recipe`` trains the seed recipe on the CIPLAB-sized synthetic set along ffd's naive and
default paths and measures predict and the service (``ffd.studies.benchmark``); ``mode=predict``
measures a training run's inference only; ``mode=scaling`` how the cost grows with the data
(``ffd.studies.scaling``); ``mode=gpu`` is the GPU check (``ffd.studies.gpu_check``, a dry run on a
machine without one). Results go into the run folder (``bench.json``, ``bench.md``; ``gpu_check.json``).
"""

from __future__ import annotations

from ffd.task import task

main = task("bench", "ffd.studies.bench_modes:run_bench")

if __name__ == "__main__":
    main()
