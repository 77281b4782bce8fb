"""Grad-CAM heatmaps of the evidence for "fake", and overlays of them on the images.

Own implementation (about 30 lines) rather than the ``grad-cam`` package: ffd's
model is already split into a convolutional trunk and a head, so the "last
conv block" is simply the trunk's output, and one autograd call through the
head gives its gradient; the trunk itself runs without a graph.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from PIL import Image, ImageDraw

from ffd import rules
from ffd.data.decoding import Decoder
from ffd.data.facts import FAKE, REAL, Box
from ffd.data.settings import Limits
from ffd.data.transforms import resize_transform
from ffd.engine.scoring import score_files
from ffd.models.module import FakeFaceClassifier
from ffd.models.shipped import Preprocess, calibrated

log = logging.getLogger(__name__)


def grad_cam(model: FakeFaceClassifier, x: torch.Tensor, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Heatmaps of the evidence for "fake", at input resolution, each scaled to [0, 1].

    The target is the log-odds ``logit_fake - logit_real``: with two softmax
    classes only the difference moves the prediction. ``gradcam`` weighs each
    channel of the trunk's feature map by its spatially averaged gradient
    (Selvaraju et al.); ``hirescam`` multiplies gradient and activation cell by
    cell (Draelos & Carin), which for the flatten head is exactly each cell's
    contribution to the log-odds, where Grad-CAM's averaging blurs it. A backbone that
    pools inside (``head=embedding``) leaves no map: both then weigh the input pixels by
    their gradient through the whole model (gradient x input).

    Args:
        model: An ffd classifier (``features`` trunk and ``head``), in eval mode.
        x: Normalized images (N, 3, H, W).

    Returns:
        Heatmaps (N, H, W), and the logit of fake (N,), temperature-scaled as the shipped model's.
    """
    rules.check("method", method)
    with torch.no_grad():
        feats = model.features(x).float()
    pooled = feats.ndim == 2
    net: Callable[[torch.Tensor], torch.Tensor] = model.head
    if pooled:
        feats, net = x.detach().float(), lambda images: model.head(model.backbone(images))
    feats.requires_grad_(True)
    with torch.enable_grad():
        logits = net(feats).float()
        (grads,) = torch.autograd.grad((logits[:, FAKE] - logits[:, REAL]).sum(), feats)
    weights = grads.mean((2, 3), keepdim=True) if method == "gradcam" and not pooled else grads
    cam = F.relu((weights * feats).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    return (cam / peak).detach(), calibrated(logits, model.temperature)[1].detach()


def explain_files(
    model: FakeFaceClassifier, files: Sequence[Path], method: str, batch_size: int, limits: Limits
) -> Iterator[tuple[Path, torch.Tensor, torch.Tensor, float]]:
    """(path, image at the input size (3, size, size) uint8, heatmap, logit) for each readable file;
    unreadable ones are logged. The images go through the shipped model's own preprocessing."""
    preprocess, shown = Preprocess(model.preprocess).to(model.device), resize_transform(model.preprocess)

    def cams(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return grad_cam(model, preprocess(x.to(model.device)), method)

    for batch in score_files(files, cams, batch_size, Decoder(int(model.preprocess["size"]), limits)):
        for item in batch.items:
            if item.image is None:
                log.warning("Skipped %s: %s", item.path, item.message)
        if batch.output is not None:
            maps, logits = batch.output
            for item, cam, logit in zip(batch.ok, maps.cpu(), logits.tolist(), strict=True):
                yield item.path, shown(item.image.permute(2, 0, 1)), cam, logit  # type: ignore[union-attr]


def overlay(
    image: torch.Tensor, cam: torch.Tensor, boxes: Sequence[Box] = (), alpha: float = 0.5
) -> Image.Image:
    """An RGB image (3, H, W uint8) blended with its heatmap in the jet colormap; boxes drawn in white."""
    heat = (colormaps["jet"](cam.numpy())[..., :3] * 255).astype(np.uint8)
    base = image.permute(1, 2, 0).numpy()
    out = Image.fromarray((base * (1 - alpha) + heat * alpha).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    for box in boxes:
        draw.rectangle(box, outline=(255, 255, 255), width=1)
    return out
