"""Grad-CAM explanations: ``python -m ffd.explain ckpt_path=CKPT input=PATH [method=gradcam|hirescam]``.

For each image (a file, folder, glob or list, as for predict), writes an
overlay PNG of the heatmap of the evidence for "fake" into ``overlays/``, and
``explain.csv`` with p_fake and, for CIPLAB-named fakes, the localization score:
the share of the heatmap inside the replaced parts (their boxes are drawn on
the overlay) next to the share of the image those parts cover.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from ffd.data.io import expand_input
from ffd.data.manifest import CLASS_NAMES, parse_fake_name
from ffd.errors import FfdError, exit_on_user_error
from ffd.gradcam import explain_files, localization, localization_report, overlay, part_boxes, replaced_parts
from ffd.models.checkpoint import load_checkpoint
from ffd.runtime import register_resolvers, tune_malloc

log = logging.getLogger(__name__)
register_resolvers()


def explain(cfg: DictConfig) -> dict[str, dict[str, float]]:
    model = load_checkpoint(cfg.ckpt_path)
    files = expand_input(str(cfg.input))
    out = Path(cfg.paths.output_dir)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    parts, cams = [], []
    with (out / "explain.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "p_fake", "label", "parts", "mass_inside", "area_share", "overlay"])
        for i, (path, img, cam, p) in enumerate(explain_files(model, files, cfg.method, cfg.batch_size)):
            bits = parse_fake_name(path)[1]  # CIPLAB fake names carry the replaced parts
            names = replaced_parts(bits)
            boxes = part_boxes(names, cam.shape[-1])
            inside, share = localization(cam, boxes) if boxes else (None, None)
            png = out / "overlays" / f"{i:05d}_{path.stem}.png"
            overlay(img, cam, boxes).save(png)
            label = CLASS_NAMES[int(p >= model.threshold)]
            writer.writerow([path, f"{p:.6f}", label, "+".join(names), inside, share, png.name])
            parts.append(bits)
            cams.append(cam)
    if not cams:
        raise FfdError(f"None of the {len(files)} files could be read.")
    report = localization_report(zip(parts, cams, strict=True))
    (out / "localization.json").write_text(json.dumps(report, indent=2))
    for name, s in report.items():
        log.info(
            "%-9s n=%4d  heatmap mass inside %.3f  (area share %.3f)",
            name,
            s["n"],
            s["mass_inside"],
            s["area_share"],
        )
    log.info("%d overlays and explain.csv in %s", len(cams), out.resolve())
    return report


@hydra.main(version_base="1.3", config_path="../../conf", config_name="explain")
def main(cfg: DictConfig) -> None:
    exit_on_user_error(lambda: explain(cfg))


if __name__ == "__main__":
    tune_malloc()
    main()
