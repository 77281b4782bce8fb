"""Score your own images: ``python -m ffd.predict ckpt_path=CKPT input=PATH [output=preds.csv]``.

``input`` is an image or a video, a folder (searched recursively), a glob
(``"photos/*.jpg"``) or a text file with one path per line. Every file gets a row: path, p_fake,
label (real/fake at the model's validation-chosen threshold), status and
message. A file that can't be read gets its status, and the run goes on; the
exit status is non-zero only if nothing could be scored. Output is CSV, or JSON
Lines when ``output`` ends in ``.jsonl``.

``ckpt_path`` is an ffd checkpoint or a model.onnx written by ``ffd.export``
(onnxruntime; no Lightning needed); a checkpoint's backbone runs in the fastest
runtime measured (``runtime=auto``). ``face_crop=true`` first crops the largest
face from each photo (``face_detector``: MTCNN, else OpenCV's Haar cascade); a
photo without one gets status ``no_face``; ``crops_dir=FOLDER`` saves the crops
for inspection. A video gets a row per sampled frame, a video row and a timeline
PNG (``ffd.deploy.video_predicting``).
"""

from __future__ import annotations

from ffd.task import task

main = task("predict", "ffd.deploy.predicting:predict_files")

if __name__ == "__main__":
    main()
