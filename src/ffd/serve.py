"""Serve a model over HTTP: ``python -m ffd.serve ckpt_path=CKPT|EXPORT_FOLDER|model.onnx``.

Opens a web page at http://127.0.0.1:8000/ where photos can be dropped to see
p_fake, the label at the model's threshold and a Grad-CAM overlay, and an API:
``POST /v1/predict`` (multipart files; ``?explain=true``, ``?face_crop=true``)
returns the rows ``ffd.predict`` writes; ``GET /v1/model`` the model card;
``GET /healthz``; docs at ``/docs``. Settings are under ``serve.`` (conf/serve.yaml).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ffd.errors import exit_on_user_error
from ffd.runtime import tune_malloc
from ffd.service.server import serve


@hydra.main(version_base="1.3", config_path="../../conf", config_name="serve")
def main(cfg: DictConfig) -> None:
    tune_malloc()
    exit_on_user_error(lambda: serve(cfg))


if __name__ == "__main__":
    main()
