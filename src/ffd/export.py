"""Export a checkpoint for deployment: ``python -m ffd.export ckpt_path=CKPT [formats=[onnx]]``.

Writes into the export run folder ``model.onnx``, ``model.torchscript.pt``,
``model.safetensors`` and ``model.json`` (the model card), each checked against
the checkpoint on the training run's test images (see ``ffd.deploy.exporting``).
"""

from __future__ import annotations

from ffd.task import task

main = task("export", "ffd.deploy.exporting:export")

if __name__ == "__main__":
    main()
