#!/usr/bin/env bash
# The GPU check: ffd's figures on a machine with a CUDA GPU and no network, into one JSON file.
#
#   make gpu-wheels              # here, with a network: ffd's wheel and the wheels a CUDA image lacks, in .whl/
#   bash bench/gpu_check.sh OUT  # there: installs .whl/ (where ffd is not installed), the offline weights, then
#                                # ffd bench mode=gpu into OUT/gpu_check.json (8 minutes at most on one GPU)
#
# Without a GPU it runs a small dry run on the CPU (what CI runs). See docs/performance.md.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-outputs/gpu_check}")
python=${PYTHON:-python3}
if ! "$python" -c "import ffd" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/ffd-site .whl/*.whl
  export PYTHONPATH=/tmp/ffd-site${PYTHONPATH:+:$PYTHONPATH}
fi
work=$(mktemp -d)  # runs, data and caches land in the working folder, as for any user
cd "$work"
"$python" -m ffd.weights
timeout 480 "$python" -m ffd.bench mode=gpu hydra.run.dir="$out"
echo "GPU check: $out/gpu_check.json"
