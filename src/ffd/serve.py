"""Serve a model over HTTP: ``python -m ffd.serve ckpt_path=CKPT|EXPORT_FOLDER|model.onnx``.

Opens a web page at http://127.0.0.1:8000/ where photos can be dropped to see
p_fake, the label at the model's threshold and a Grad-CAM overlay, and an API:
``POST /v1/predict`` (multipart files; ``?explain=true``, ``?face_crop=true``)
returns the rows ``ffd.predict`` writes; ``GET /v1/model`` the model card;
``GET /healthz``; docs at ``/docs``. Settings are under ``serve.`` (conf/serve.yaml).
"""

from __future__ import annotations

from ffd.task import task

main = task("serve", "ffd.service.server:serve")

if __name__ == "__main__":
    main()
