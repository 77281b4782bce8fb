"""What every setting may be, in one table: the command-line check, the service's settings and the
constructors all ask it, so a rule is written once and a bad value gets the same message everywhere.

A key is the setting's path in a composed config (``data.cache.views``); the sets of names a
setting chooses from (runtimes, cache modes, heads, ...) are defined here too, and the modules that
implement them import them from here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ffd.errors import ConfigError

# The names a setting chooses from (the implementing modules import them from here).
RUNTIMES = ("auto", "torch", "onnxruntime", "openvino")
CACHE_MODES = ("auto", "none", "pixels", "features")
FEATURE_DTYPES = ("float16", "uint8")
HEADS = ("flatten", "avgpool", "embedding")
EMBEDDINGS = ("pooled", "projected")
RESIDUALS = ("npr",)
FREEZE_MODES = ("frozen", "full", "gradual", "layernorm")
THRESHOLD_METHODS = ("eer", "youden")
DETECTORS = ("auto", "haar", "mtcnn")
CAM_METHODS = ("gradcam", "hirescam")
AGGREGATES = ("mean", "median", "max")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Rule:
    """What a setting must be: a test of its value and the words that say so, with an example."""

    ok: Callable[[Any], bool]
    must: str  # "an integer >= 1": what the message says
    example: str
    none_ok: bool = False


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def whole(
    low: int, high: int | None = None, example: str = "", none_ok: bool = False, note: str = ""
) -> Rule:
    """An integer from ``low`` (to ``high``)."""
    must = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"
    return Rule(
        lambda v: _is_int(v) and v >= low and (high is None or v <= high),
        must + (f" ({note})" if note else "") + (", or null" if none_ok else ""),
        example or str(low),
        none_ok,
    )


def _host_pattern(v: Any) -> bool:
    """A host name, an address, ``*.domain`` or ``*`` (Starlette's TrustedHostMiddleware's patterns)."""
    if not isinstance(v, str) or not v or "*" in v[1:]:
        return False
    return v == "*" or not v.startswith("*") or v.startswith("*.")


def number(low: float, high: float | None = None, example: str = "", above: bool = False,
           below: bool = False) -> Rule:  # fmt: skip
    """A number from ``low`` (``above``: more than it) to ``high`` (``below``: less than it)."""
    if high is None:
        must = f"a number {'>' if above else '>='} {low:g}"
    else:
        must = f"a number from {'above ' if above else ''}{low:g} to {'below ' if below else ''}{high:g}"

    def ok(v: Any) -> bool:
        return (
            _is_number(v)
            and (v > low if above else v >= low)
            and (high is None or (v < high if below else v <= high))
        )

    return Rule(ok, must, example or f"{low:g}")


def choice(values: Iterable[str], none_ok: bool = False) -> Rule:
    names = tuple(values)
    return Rule(lambda v: v in names, "one of " + ", ".join(names), names[0], none_ok)


RULES: dict[str, Rule] = {
    "seed": whole(0, example="42"),
    "batch_size": whole(1, example="32"),
    "bootstrap": whole(0, example="1000", note="0: no confidence intervals"),
    "face_margin": number(0, 2, example="0.25"),
    "face_detector": choice(DETECTORS),
    "runtime": choice(RUNTIMES),
    "device": choice(DEVICES),
    "method": choice(CAM_METHODS),
    "localization": choice(CAM_METHODS, none_ok=True),
    "callbacks.gradcam.method": choice(CAM_METHODS),
    "video_aggregate": choice(AGGREGATES),
    "cv.folds": Rule(
        lambda v: _is_int(v) and (v == 0 or v >= 2), "0 (no cross-validation) or an integer >= 2", "5"
    ),  # fmt: skip
    "data.loader.batch_size": whole(1, example="32"),
    "data.loader.num_workers": whole(0, example="2", note="0: load in the main process"),
    "data.cache.mode": choice(CACHE_MODES),
    "data.cache.views": whole(1, example="4"),
    "data.cache.dtype": choice(FEATURE_DTYPES),
    "data.cache.runtime": choice(RUNTIMES),
    "data.split.val_fraction": number(0, 1, below=True, example="0.15"),
    "data.split.test_fraction": number(0, 1, below=True, example="0.15"),
    "model.head": choice(HEADS),
    "model.embedding": choice(EMBEDDINGS),
    "model.residual": choice(RESIDUALS, none_ok=True),
    "model.freeze": choice(FREEZE_MODES),
    "model.threshold_method": choice(THRESHOLD_METHODS),
    "model.optimizer.lr": number(0, above=True, example="1e-3"),
    "model.dropout": number(0, 1, below=True, example="0.2"),
    "model.backbone_lr_factor": number(0, example="0.1"),
    "model.input_size": whole(32, example="224", none_ok=True),
    "trainer.max_epochs": Rule(
        lambda v: _is_int(v) and (v >= 1 or v == -1), "an integer >= 1 (or -1: no limit)", "20"
    ),  # fmt: skip
    "serve.port": whole(0, 65535, example="8000", note="0: any free port"),
    "serve.max_batch": whole(1, example="32"),
    "serve.max_files": whole(1, example="16"),
    "limits.max_pixels": whole(1, example="40000000"),
    "limits.min_side": whole(1, example="8"),
    "limits.max_aspect": number(1, example="20"),
    "limits.max_video_seconds": number(0, above=True, example="600"),
    "limits.max_video_frames": whole(1, example="30000"),
    "limits.max_video_pixels": whole(1, example="8847360"),
    "serve.max_wait_ms": number(0, example="0"),
    "serve.max_upload_mb": number(0, above=True, example="20"),
    "serve.timeout_s": number(0, above=True, example="30"),
    "serve.face_margin": number(0, 2, example="0.25"),
    "serve.face_detector": choice(DETECTORS),
    "serve.cam_method": choice(CAM_METHODS),
    "serve.allowed_hosts": Rule(
        lambda v: isinstance(v, list | tuple) and bool(v) and all(map(_host_pattern, v)),
        "a list of host names or addresses, '*.example.com' for a domain's names, '*' for any (or null: "
        "this machine's own names)",
        "[localhost,myhost.lan,192.168.1.5]",
        none_ok=True,
    ),  # fmt: skip
    "serve.body_timeout_s": number(0, above=True, example="15"),
    "serve.max_connections": whole(1, example="32"),
    "serve.max_queue": whole(1, example="128"),
    "serve.decode_threads": whole(1, example="2"),
    "serve.log_max_mb": number(0, above=True, example="1024"),
}


def problem(key: str, value: Any) -> str | None:
    """What is wrong with ``key=value`` (one line with the fix), or None when it is fine."""
    rule = RULES[key]
    if value is None:
        return None if rule.none_ok else f"{key} is null: it must be {rule.must}, e.g. {key}={rule.example}."
    if rule.ok(value):
        return None
    return f"{key}={value!r} is not valid: it must be {rule.must}, e.g. {key}={rule.example}."


def check(key: str, value: Any) -> None:
    """Raise a ConfigError if ``value`` breaks the rule of ``key``."""
    if found := problem(key, value):
        raise ConfigError(found)


def check_all(values: Mapping[str, Any]) -> None:
    """Raise one ConfigError listing every ``key: value`` that breaks its rule (a line each)."""
    if found := [p for key, value in values.items() if (p := problem(key, value))]:
        raise ConfigError("\n".join(found))


_ABSENT = object()


def check_config(cfg: DictConfig) -> None:
    """Raise one ConfigError listing every setting of ``cfg`` that breaks a rule (a line each), and
    split fractions that leave nothing to train on."""
    present = {k: v for k in RULES if (v := OmegaConf.select(cfg, k, default=_ABSENT)) is not _ABSENT}
    problems = [p for key, value in present.items() if (p := problem(key, value))]
    split = OmegaConf.select(cfg, "data.split")
    if split is not None and not problems and (total := split.val_fraction + split.test_fraction) >= 1:
        problems.append(
            f"data.split.val_fraction + data.split.test_fraction = {total:g}: they must sum below 1, "
            "leaving images to train on."
        )
    if problems:
        raise ConfigError("\n".join(problems))
