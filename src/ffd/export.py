"""Export a checkpoint for deployment: ``python -m ffd.export ckpt_path=CKPT [formats=[onnx]]``.

Writes into the export run folder ``model.onnx``, ``model.torchscript.pt``,
``model.safetensors`` and ``model.json`` (the model card), each checked against
the checkpoint on the training run's test images (see ``ffd.inference.export``).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ffd.errors import exit_on_user_error
from ffd.inference.export import export
from ffd.runtime import tune_malloc


@hydra.main(version_base="1.3", config_path="../../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    tune_malloc()
    exit_on_user_error(lambda: export(cfg))


if __name__ == "__main__":
    main()
