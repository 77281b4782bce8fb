"""The LightningModule: a (frozen) backbone, a head, cross-entropy and an optimizer."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import get_class
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ffd import rules
from ffd.data.facts import CLASS_NAMES, FAKE, REAL, logit_of, p_fake
from ffd.errors import ConfigError
from ffd.metrics.scores import choose_threshold, classification_metrics
from ffd.metrics.selective import check_abstain
from ffd.models.backbones import build_backbone
from ffd.models.encoder import Encoder, state_fingerprint
from ffd.models.finetune import GradualUnfreeze, build_scheduler
from ffd.models.heads import build_head

log = logging.getLogger(__name__)

# fp32: the precision every consumer and export scores in (docs/performance.md), recorded with the model.
INFERENCE_PRECISION = "32-true"
# (images, labels), or {"features", "label"} from the feature cache.
Batch = tuple[torch.Tensor, torch.Tensor] | dict[str, torch.Tensor]


def _optimizer_spec(optimizer: Callable | Mapping[str, Any]) -> dict[str, Any]:
    """A primitive description of an optimizer, so checkpoints hold no pickled callables."""
    if isinstance(optimizer, Mapping):
        return {k: v for k, v in optimizer.items() if k != "_partial_"}
    func = getattr(optimizer, "func", optimizer)  # functools.partial from Hydra's _partial_
    return {
        "_target_": f"{func.__module__}.{func.__qualname__}",
        **getattr(optimizer, "keywords", {}),
    }


def _train_layernorms(backbone: nn.Module, name: str) -> None:
    """Make the weights and biases of the backbone's LayerNorm layers trainable (GenD's LN-tuning: about
    0.03 % of CLIP ViT-L/14); every other backbone parameter stays frozen."""
    norms = [m for m in backbone.modules() if isinstance(m, nn.LayerNorm) and m.elementwise_affine]
    if not norms:
        raise ConfigError(
            f"model.freeze=layernorm trains the backbone's LayerNorm layers, and {name} has none: use a "
            "transformer (e.g. timm:vit_large_patch14_clip_quickgelu_224.openai) or another freeze mode."
        )
    for m in norms:
        m.requires_grad_(True)


def _gathered(x: Any) -> torch.Tensor:
    """``all_gather``'s (world_size, n) tensor as one flat CPU tensor."""
    assert isinstance(x, torch.Tensor)
    return x.flatten().cpu()


class FakeFaceClassifier(L.LightningModule):
    """Real (0) vs fake (1) face classifier: backbone trunk -> head -> 2 logits.

    Built from primitives only, so ``FakeFaceClassifier.load_from_checkpoint(path)``
    works without Hydra or the config that trained it. Every setting comes from
    ``conf/model/`` (the one place defaults live); a checkpoint carries them all.

    Args:
        backbone: torchvision model name or ``timm:<name>`` (see ``ffd.models.backbones``).
        pretrained: Start from pretrained (ImageNet) weights.
        weights: torchvision weights enum member (None for timm).
        head: ``flatten`` (the seed's), ``avgpool``, or ``embedding``: one linear layer on the
            backbone's own pooled embedding (see ``ffd.models.heads``).
        embedding: ``head=embedding``: ``pooled`` (the pre-logits vector) or ``projected`` (a timm
            model's pretrained head, for CLIP its image projection); unused by other heads.
        residual: ``npr``: the backbone sees the NPR residual of its input (first op of the backbone,
            so of every export); None: the image.
        num_classes: Output classes (2: real, fake).
        freeze: ``frozen`` trains the head only, with backbone BatchNorm statistics
            frozen too (Keras ``trainable=False``); ``full`` trains everything;
            ``gradual`` starts frozen and unfreezes the backbone top-down at
            ``unfreeze_epochs`` (``ffd.models.finetune.GradualUnfreeze``); ``layernorm`` trains
            the backbone's LayerNorm weights and biases and the head, nothing else (GenD).
        input_size: Square input side in pixels; None = the backbone's own.
        optimizer: A partial optimizer (Hydra ``_partial_: true``) or its
            ``{_target_, **kwargs}`` description.
        backbone_lr_factor: The backbone's learning rate is the optimizer's times this
            (``full`` and ``gradual``).
        unfreeze_epochs: ``gradual``: the epoch (0-based) at which each stage of the
            backbone unfreezes, top stage first; one entry = the whole backbone at once.
        scheduler: Learning-rate schedule, e.g. ``{name: cosine, warmup_epochs: 1,
            min_lr_factor: 0.01}``; None = constant.
        dropout: Dropout before the head's linear layer.
        weights_file: timm only: load pretrained weights from this local file.
        channels_last: Run the backbone in NHWC memory layout (faster on CPU and tensor cores).
        threshold_method: How the decision threshold on the logit (log-odds of fake) is chosen on
            each validation epoch: ``eer`` (equal error rate) or ``youden`` (max TPR - FPR).
            It is saved in every checkpoint and used by eval and predict.
        abstain: ``{risk: R}`` or ``{coverage: C}``: a band of logits around the threshold, chosen on val
            after training (``ffd.metrics.selective``), where predict answers ``uncertain``; None: none.
    """

    def __init__(
        self,
        backbone: str,
        pretrained: bool,
        weights: str | None,
        head: str,
        embedding: str,
        residual: str | None,
        num_classes: int,
        freeze: str,
        input_size: int | None,
        optimizer: Callable | Mapping[str, Any],
        channels_last: bool,
        threshold_method: str,
        backbone_lr_factor: float,
        unfreeze_epochs: Sequence[int],
        scheduler: Mapping[str, Any] | None,
        dropout: float,
        weights_file: str | None,
        abstain: Mapping[str, float] | None,
    ) -> None:
        super().__init__()
        check_abstain(abstain)
        rules.check_all({"model.freeze": freeze, "model.threshold_method": threshold_method,
                         "model.dropout": dropout, "model.head": head, "model.embedding": embedding,
                         "model.residual": residual})  # fmt: skip
        self.save_hyperparameters(ignore=["optimizer", "unfreeze_epochs", "scheduler", "abstain"])
        # Plain lists and dicts: checkpoints load with weights_only=True.
        self.hparams["optimizer"] = _optimizer_spec(optimizer)
        self.hparams["unfreeze_epochs"] = [int(e) for e in unfreeze_epochs]
        self.hparams["scheduler"] = dict(scheduler) if scheduler else None
        self.hparams["abstain"] = {str(k): float(v) for k, v in abstain.items()} if abstain else None
        self.backbone, self.preprocess = build_backbone(
            backbone, pretrained, weights, input_size, weights_file,
            embedding if head == "embedding" else None, residual,
        )  # fmt: skip
        # True while no backbone parameter trains (frozen; gradual before its first stage).
        self.frozen = freeze in ("frozen", "gradual")
        self.backbone.requires_grad_(freeze == "full")
        if freeze == "layernorm":
            _train_layernorms(self.backbone, backbone)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.backbone.to(memory_format=self.memory_format)
        size = int(self.preprocess["size"])
        with torch.no_grad():
            shape = self.backbone.eval()(torch.zeros(1, 3, size, size)).shape[1:]
        self.head = build_head(head, shape, num_classes, dropout)
        self.train()
        base = classification_metrics()
        self.train_metrics = base.clone(prefix="train/")
        self.val_metrics = base.clone(prefix="val/")
        # A logit: replaced by the validation-chosen one after each validation epoch (p_fake 0.5 until then)
        self.threshold_logit = 0.0
        # Set after training, on the best checkpoint (ffd.training.calibrating): the temperature fitted on
        # val, and the val (and test) metrics of the model as it ships.
        self.temperature = 1.0
        self.final_metrics: dict[str, float] = {}
        self.abstain_band: dict[str, Any] | None = None  # chosen with the temperature (model.abstain)
        self.inference_precision = INFERENCE_PRECISION
        self._val_scores: list[tuple[torch.Tensor, torch.Tensor]] = []

    def train(self, mode: bool = True) -> FakeFaceClassifier:
        super().train(mode)
        # Lightning calls train() every epoch; a frozen layer's BN statistics must not move.
        if mode and self.frozen:
            self.backbone.eval()
        elif mode:
            for m in self.backbone.modules():
                params = list(m.parameters()) if isinstance(m, _BatchNorm) else []
                if params and not any(p.requires_grad for p in params):
                    m.eval()
        return self

    def configure_callbacks(self) -> list[L.Callback]:
        if self.hparams["freeze"] == "gradual":
            return [GradualUnfreeze(self.hparams["unfreeze_epochs"])]
        return []

    def on_fit_start(self) -> None:
        if not self.trainer.is_global_zero:
            return
        trunk = sum(p.numel() for p in self.backbone.parameters())
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        log.info(
            "Model: %s trunk (%.1f M parameters, %s) -> %s head; %.0f K parameters train now (%.3g %% "
            "of the model's).",
            self.hparams["backbone"], trunk / 1e6, self.hparams["freeze"], self.hparams["head"],
            trainable / 1e3, 100 * trainable / total,
        )  # fmt: skip

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=self.memory_format)
        # No graph through a frozen trunk: less memory, faster.
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W), normalized -> logits (N, num_classes)."""
        return self.head(self.features(x))

    def encoder(self) -> Encoder | None:
        """The frozen trunk with its fingerprint, for caching its features; None if it trains."""
        if self.hparams["freeze"] != "frozen":  # gradual: frozen now, trains later
            return None
        h = self.hparams
        size = self.preprocess["size"]
        fingerprint = f"{h['backbone']}:{h['weights']}:{size}:{state_fingerprint(self.backbone)}"
        return Encoder(self.backbone, fingerprint, self.memory_format)

    def _step(self, batch: Batch, batch_idx: int, split: str) -> torch.Tensor:
        if isinstance(batch, dict):  # cached backbone features: the head is all that runs, in fp32
            # (mixed precision is for the backbone; the head's fp32 step costs next to nothing)
            with torch.autocast(self.device.type, enabled=False):
                logits, y = self.head(batch["features"].float()), batch["label"]
        else:
            x, y = batch
            logits = self(x).float()
        loss = F.cross_entropy(logits, y)
        metrics = getattr(self, f"{split}_metrics")
        # The logit of fake: AUROC and the threshold on it never tie where softmax saturates to 1.0
        logit = (logits[:, FAKE] - logits[:, REAL]).detach()
        metrics.update(logit, y)
        if split == "val":
            self._val_scores.append((logit.cpu(), y.detach().cpu()))
        self.log(
            f"{split}/loss",
            loss,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=len(y),
            sync_dist=True,
        )
        if batch_idx == 0:  # logged once: Lightning computes (across ranks) and resets them at epoch
            # end, before any callback reads them; logging the objects every step cost more than
            # the head's training steps themselves
            self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=split != "train")
            # The curves' x-axis is the epoch (Lightning takes a logged "step" as the step to log at):
            # what a step counts (batches of cached features or of images) differs between recipes. The
            # CSV keeps its epoch column (Lightning adds it only when no step is logged).
            for axis in ("step", "epoch"):
                self.log(axis, float(self.current_epoch), on_step=False, on_epoch=True)
        return loss

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, batch_idx, "train")

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._step(batch, batch_idx, "val")

    def on_validation_epoch_end(self) -> None:
        if self._val_scores and not self.trainer.sanity_checking:
            scores, labels = (torch.cat(t) for t in zip(*self._val_scores, strict=True))
            if self.trainer.world_size > 1:  # every rank picks the same threshold from all of val
                scores, labels = (_gathered(self.all_gather(t.to(self.device))) for t in (scores, labels))
            self.threshold_logit = choose_threshold(scores, labels, self.hparams["threshold_method"])
            self.log("val/threshold_logit", self.threshold_logit)
        self._val_scores.clear()

    def configure_optimizers(self) -> Any:
        spec = dict(self.hparams["optimizer"])
        optimizer_cls = get_class(spec.pop("_target_"))
        if self.hparams["freeze"] == "frozen":
            optimizer = optimizer_cls([p for p in self.parameters() if p.requires_grad], **spec)
        else:
            # The backbone is in its own group from the start, even while frozen (see ffd.models.finetune).
            in_backbone = {id(p) for p in self.backbone.parameters()}
            rest = [p for p in self.parameters() if id(p) not in in_backbone]
            optimizer = optimizer_cls([{"params": rest}], **spec)
            lr = optimizer.defaults["lr"] * float(self.hparams["backbone_lr_factor"])
            optimizer.add_param_group({"params": list(self.backbone.parameters()), "lr": lr})
        if not self.hparams["scheduler"]:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": build_scheduler(self.hparams["scheduler"], optimizer, self.trainer),
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # What any consumer (eval, predict, export) needs to feed the model exactly as in training.
        checkpoint["ffd"] = {
            "preprocess": self.preprocess,
            "class_names": list(CLASS_NAMES),
            "threshold": p_fake(self.threshold_logit),  # for readers: decisions use the logit
            "threshold_logit": self.threshold_logit,
            "temperature": self.temperature,
            "metrics": self.final_metrics,
            "precision": self.inference_precision,
            "abstain": self.abstain_band,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("ffd", {})
        self.threshold_logit = saved.get("threshold_logit", logit_of(saved.get("threshold", 0.5)))
        self.temperature = saved.get("temperature", 1.0)
        self.final_metrics = saved.get("metrics", {})
        self.abstain_band = saved.get("abstain")
        self.inference_precision = saved.get("precision", INFERENCE_PRECISION)
        self.preprocess = saved.get("preprocess", self.preprocess)  # as trained, whatever the code now says
