"""Backbones by name (torchvision or ``timm:<name>``), with the preprocessing their weights expect.

Every backbone maps normalized images (N, 3, H, W) to a 4-D feature map (N, C, h, w),
so any head and the feature cache work with any backbone; or, for the ``embedding``
head, to the model's own pooled embedding (N, D), one vector per image. Input size,
mean, std and interpolation come from the backbone's own metadata (torchvision's
weights transforms, timm's pretrained config), never from numbers written here.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from ffd.errors import ConfigError
from ffd.models.pretrained import WeightsUnavailableError, load_state_dict

TIMM_PREFIX = "timm:"


class TimmTrunk(nn.Module):
    """A timm model's ``forward_features``, always as an (N, C, h, w) map.

    CNNs already give that. Models that give channels-last maps (``output_fmt``
    NHWC, e.g. Swin) are permuted. ViT-like models give tokens (N, L, C): the
    prefix tokens (class/register/distillation) are dropped and the patch tokens
    are laid back on their square grid, so a ``flatten`` head keeps where in the
    face a feature fired and ``avgpool`` averages the patches.
    """

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0))
        self.nhwc = str(getattr(model, "output_fmt", "NCHW")) == "NHWC"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.model.forward_features(x)
        if f.ndim == 3:
            tokens = f[:, self.num_prefix_tokens :]
            n, length, c = tokens.shape
            side = math.isqrt(length)
            if side * side != length:
                raise ConfigError(f"Cannot lay {length} patch tokens on a square grid; use another backbone.")
            return tokens.transpose(1, 2).reshape(n, c, side, side)
        return f.permute(0, 3, 1, 2) if self.nhwc else f


class TimmEmbedding(nn.Module):
    """A timm model's own embedding (N, D): ``model(x)``, with its pooling and, if it was built with
    one, its head.

    Built with ``num_classes=0`` it is the pooled pre-logits vector (a ViT's class token after the
    final norm, a CNN's global average); built with its pretrained head, that head's output, which
    for CLIP weights is the image projection (CLIP ViT-L/14: 1024-d token -> 768-d embedding).
    """

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class Pooled(nn.Module):
    """A torchvision trunk's map averaged over space, (N, C, h, w) -> (N, C): what its classifier sees."""

    def __init__(self, trunk: nn.Module) -> None:
        super().__init__()
        self.trunk = trunk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x).mean((2, 3))


class NprResidual(nn.Module):
    """NPR (Tan et al., "Rethinking the Up-Sampling Operations in CNN-based Generative Network for
    Generalizable Deepfake Detection", CVPR 2024): the image minus the nearest-neighbour 2x
    up-sampling of its 2x down-sampling.

    A generator's up-sampling leaves the pixels of each 2x2 block related; the residual keeps
    those relations and drops most of the image content. Scaled by 2/3, as the authors' code feeds
    it to its first convolution.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Every other pixel, repeated back to full size (any size: nearest maps output i to i // 2).
        up = F.interpolate(x[..., ::2, ::2], size=x.shape[-2:], mode="nearest")
        return (x - up) * (2 / 3)


def build_backbone(
    name: str, pretrained: bool, weights: str | None, input_size: int | None, weights_file: str | None,
    embedding: str | None, residual: str | None,
) -> tuple[nn.Module, dict[str, Any]]:  # fmt: skip
    """A classification model's trunk (its feature map, or its embedding; never its classifier) and its
    preprocessing.

    Args:
        name: A torchvision model name (mobilenet_v2, efficientnet_b0, resnet50,
            convnext_tiny, ...) or ``timm:<name>`` for any timm model, optionally with a
            pretrained tag (``timm:efficientnet_b0.ra_in1k``).
        pretrained: Load the pretrained weights; False = random init.
        weights: torchvision weights enum member (``IMAGENET1K_V1``, ``DEFAULT``, ...; None =
            ``DEFAULT``); unused for timm (put the tag in the name).
        input_size: Square input side; None = the size the weights were trained at.
        weights_file: timm only: a local weights file to load instead of downloading
            (timm's ``pretrained_cfg_overlay=dict(file=...)``).
        embedding: None: the 4-D feature map. ``pooled``: the pooled embedding (N, D) instead;
            ``projected`` (timm): the output of the model's pretrained head, for CLIP weights its
            image projection.
        residual: ``npr``: the trunk sees the NPR residual of its input (``NprResidual``), its
            first op, so every consumer and export runs it. None: the image itself.

    Returns:
        The trunk, and its preprocessing: ``size``, ``mean``, ``std``, ``interpolation``.
    """
    if name.startswith(TIMM_PREFIX):
        trunk, preprocess = _timm_backbone(
            name.removeprefix(TIMM_PREFIX), pretrained, input_size, weights_file, embedding
        )
    elif weights_file:
        raise ConfigError("model.weights_file is for timm backbones; torchvision reads torch's hub cache.")
    elif embedding == "projected":
        raise ConfigError(
            f"model.embedding=projected takes a timm model's pretrained head (CLIP's image projection); "
            f"torchvision's {name} has a classifier there: use model.embedding=pooled."
        )
    else:
        trunk, preprocess = _torchvision_backbone(name, pretrained, weights or "DEFAULT", input_size)
        trunk = Pooled(trunk) if embedding else trunk
    if residual == "npr":
        trunk = nn.Sequential(NprResidual(), trunk)
    return trunk, preprocess


def _torchvision_backbone(
    name: str, pretrained: bool, weights: str, input_size: int | None
) -> tuple[nn.Module, dict[str, Any]]:
    try:
        enum = torchvision.models.get_model_weights(name)
    except ValueError as err:
        raise ConfigError(
            f"Unknown torchvision backbone {name!r}: {err}. "
            "For a timm model write model.backbone=timm:<name>."
        ) from None
    try:
        w = enum[weights]
    except KeyError:
        raise ConfigError(
            f"{name} has no weights {weights!r}; choose from {[m.name for m in enum]}."
        ) from None
    model = torchvision.models.get_model(name, weights=None)
    if pretrained:
        model.load_state_dict(load_state_dict(w))
    trunk = _torchvision_trunk(name, model)
    t = w.transforms()
    size = input_size or int(t.crop_size[0])
    return trunk, {
        "size": size,
        "mean": list(t.mean),
        "std": list(t.std),
        "interpolation": t.interpolation.value,
    }


def _torchvision_trunk(name: str, model: nn.Module) -> nn.Module:
    """``features`` where the model has one (MobileNet, EfficientNet, ConvNeXt, VGG), else the
    layers before global pooling (ResNet, RegNet, ...)."""
    if isinstance(model, torchvision.models.SwinTransformer):  # its features are NHWC: norm, then NCHW
        return nn.Sequential(model.features, model.norm, model.permute)
    features = getattr(model, "features", None)
    if isinstance(features, nn.Module):
        return features
    layers: list[nn.Module] = []
    for child in model.children():
        if isinstance(child, nn.AdaptiveAvgPool2d):
            return nn.Sequential(*layers)
        layers.append(child)
    raise ConfigError(
        f"torchvision model {name!r} has no convolutional trunk ffd can cut (no 'features', no global "
        "pooling); for transformers use timm, e.g. model.backbone=timm:vit_small_patch16_224."
    )


def _timm_backbone(
    name: str, pretrained: bool, input_size: int | None, weights_file: str | None, embedding: str | None
) -> tuple[nn.Module, dict[str, Any]]:
    import timm
    from timm.data import resolve_data_config

    if not timm.is_model(name):
        raise ConfigError(
            f"Unknown timm model {name!r}. List them with: python -c \"import timm; print(timm.list_models('*"
            f"{name.split('.')[0][:6]}*'))\""
        )
    kwargs: dict[str, Any] = {"num_classes": 0}  # pooled: the model's own pooling, no classifier
    if embedding is None:  # the map: no pooling either
        kwargs["global_pool"] = ""
    elif embedding == "projected":  # the pretrained head kept, with as many outputs as the weights have
        kwargs = {}
    if weights_file:
        if not Path(weights_file).is_file():
            raise ConfigError(f"model.weights_file={weights_file} does not exist.")
        kwargs["pretrained_cfg_overlay"] = {"file": str(weights_file)}
    default_cfg = timm.models.get_pretrained_cfg(name)
    if input_size and default_cfg is not None and default_cfg.fixed_input_size:
        kwargs["img_size"] = input_size  # ViTs: position embeddings are resampled to the new grid
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as err:
        if not pretrained:
            raise
        if weights_file:  # the file is there (checked above): it does not fit this model
            raise ConfigError(
                f"model.weights_file={weights_file} could not be loaded into timm:{name} "
                f"({type(err).__name__}: {err}); is it this model's weights?"
            ) from err
        raise _timm_weights_error(name, default_cfg, err) from err
    if pretrained and weights_file:
        _check_weights_file(model, weights_file, name)
    if embedding == "projected" and not model.num_classes:
        raise ConfigError(
            f"timm:{name} has no pretrained head to project its embedding with: use model.embedding=pooled "
            "(model.embedding=projected is for CLIP weights, whose head is the image projection)."
        )
    cfg = resolve_data_config({}, model=model)
    preprocess = {
        "size": input_size or int(cfg["input_size"][-1]),
        "mean": [float(v) for v in cfg["mean"]],
        "std": [float(v) for v in cfg["std"]],
        "interpolation": str(cfg["interpolation"]),
    }
    return (TimmEmbedding(model) if embedding else TimmTrunk(model)), preprocess


def _check_weights_file(model: nn.Module, weights_file: str, name: str) -> None:
    """timm loads a pretrained file non-strictly (the classifier is dropped): make sure it held this model."""
    from timm.models import load_state_dict

    saved = set(load_state_dict(weights_file))
    missing = [k for k in model.state_dict() if k not in saved and not k.endswith("num_batches_tracked")]
    if missing:
        raise ConfigError(
            f"model.weights_file={weights_file} is not timm:{name}'s weights: {len(missing)} of its tensors "
            f"are not in the file (e.g. {missing[:3]}). Pass the weights of that model, in timm's format."
        )


def _timm_weights_error(name: str, cfg: Any, err: Exception) -> WeightsUnavailableError:
    from huggingface_hub import constants

    repo = getattr(cfg, "hf_hub_id", None) or getattr(cfg, "url", None) or "(no download source)"
    filename = getattr(cfg, "hf_hub_filename", None) or "model.safetensors"
    return WeightsUnavailableError(
        f"Pretrained weights for timm:{name} are not available: timm could not load {repo} "
        f"({filename}) from the Hugging Face cache {constants.HF_HUB_CACHE} or download it "
        f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). To fix: on a machine with "
        f"network run `python -c \"import timm; timm.create_model('{name}', pretrained=True)\"` and copy its "
        f"{constants.HF_HUB_CACHE} (set HF_HOME to move it) here; or pass a downloaded weights file with "
        "model.weights_file=/path/to/model.safetensors; "
        "or train from random init with model.pretrained=false."
    )
