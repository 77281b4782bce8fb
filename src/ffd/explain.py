"""Grad-CAM explanations: ``python -m ffd.explain ckpt_path=CKPT input=PATH [method=gradcam|hirescam]``.

For each image (a file, folder, glob or list, as for predict), writes an
overlay PNG of the heatmap of the evidence for "fake" into ``overlays/``, and
``explain.csv`` with p_fake and, for CIPLAB-named fakes, the localization score:
the share of the heatmap inside the replaced parts (their boxes are drawn on
the overlay) next to the share of the image those parts cover. It runs on the GPU
when there is one (``device=cpu`` to keep it off), at the precision recorded with the model.
"""

from __future__ import annotations

from ffd.task import task

main = task("explain", "ffd.evaluation.explaining:explain")

if __name__ == "__main__":
    main()
