"""Grad-CAM explanations: ``python -m ffd.explain ckpt_path=CKPT input=PATH [method=gradcam|hirescam]``.

For each image (a file, folder, glob or list, as for predict), writes an
overlay PNG of the heatmap of the evidence for "fake" into ``overlays/``, and
``explain.csv`` with p_fake and, for CIPLAB-named fakes, the localization score:
the share of the heatmap inside the replaced parts (their boxes are drawn on
the overlay) next to the share of the image those parts cover. It runs on the GPU
when there is one (``device=cpu`` to keep it off), at the precision recorded with the model.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ffd.analysis.explain import explain
from ffd.errors import exit_on_user_error
from ffd.runtime import tune_malloc


@hydra.main(version_base="1.3", config_path="../../conf", config_name="explain")
def main(cfg: DictConfig) -> None:
    tune_malloc()
    exit_on_user_error(lambda: explain(cfg))


if __name__ == "__main__":
    main()
