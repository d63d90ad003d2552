"""The LightningModule that learns a fusion by metric learning over 2D-3D correspondences.

It knows nothing about datasets: batches are dicts with the keys of
:data:`fuseloc.data.correspondences.BATCH_KEYS`, and the DataModule initialises the fusion (PCA) through its
``fit_fusion`` method. Localization-based validation lives in :mod:`fuseloc.callbacks.localization_val`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as pl
import torch
from jsonargparse import lazy_instance
from pytorch_metric_learning.losses import BaseMetricLossFunction, MultiSimilarityLoss
from pytorch_metric_learning.miners import BaseMiner, MultiSimilarityMiner
from torch import Tensor

from fuseloc.data.correspondences import BATCH_KEYS
from fuseloc.errors import InputError
from fuseloc.models.fusion import (
    Fusion,
    LearnedFusion,
    fusion_class,
    fusion_class_path,
    fusion_init_args,
    to_fusion,
)
from fuseloc.models.losses import LossOutput, MetricLoss

logger = logging.getLogger(__name__)

#: Checkpoint key holding what is needed to rebuild the fusion without Lightning or the training config.
CHECKPOINT_KEY = "fuseloc_fusion"


class FuseLocModule(pl.LightningModule):
    """A fusion trained so that observations of one 3D point embed close and look-alikes far.

    Args:
        fusion: the fusion to train (``local_dim``/``global_dim`` are linked from the data by train.py).
        loss: a pytorch-metric-learning loss; embeddings are L2-normalised fused descriptors.
        miner: a pytorch-metric-learning miner, or None for all pairs/triplets.
        memory_size: cross-batch memory entries (0: off).
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
    """

    def __init__(
        self,
        fusion: Fusion = lazy_instance(LearnedFusion),  # noqa: B008 (jsonargparse lazy default)
        loss: BaseMetricLossFunction = lazy_instance(MultiSimilarityLoss),  # noqa: B008
        miner: BaseMiner | None = lazy_instance(MultiSimilarityMiner),  # noqa: B008
        memory_size: int = 0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
    ):
        super().__init__()
        if not any(p.requires_grad for p in fusion.parameters()):
            raise InputError(f"{type(fusion).__name__} has no trainable parameters; train a LearnedFusion")
        self.save_hyperparameters(ignore=["fusion", "loss", "miner"])
        self.fusion = fusion
        self.metric_loss = MetricLoss(loss, miner, memory_size, fusion.out_dim)
        self.lr = lr
        self.weight_decay = weight_decay

    def setup(self, stage: str) -> None:
        # Before DDP wraps the model: every process fits the same deterministic PCA.
        datamodule = getattr(self.trainer, "datamodule", None)
        if getattr(self.fusion, "is_fitted", True) or datamodule is None:
            return
        datamodule.fit_fusion(self.fusion)

    def embed(self, batch: dict[str, Tensor]) -> Tensor:
        """[B x E] fused embeddings of a batch (one global reduction per distinct image)."""
        missing = set(BATCH_KEYS) - set(batch)
        if missing:
            raise KeyError(f"batch lacks keys {sorted(missing)}")
        # Lightning has moved the batch to the module's device; the cast covers caches stored as float16.
        reduced = self.fusion.reduce_global(to_fusion(self.fusion, batch["global"]))
        return self.fusion.fuse(to_fusion(self.fusion, batch["local"]), reduced[batch["global_index"]])

    def _step(self, batch: dict[str, Tensor]) -> LossOutput:
        return self.metric_loss(self.embed(batch), batch["labels"])

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        out = self._step(batch)
        size = len(batch["labels"])
        self.log("train/loss", out.loss, prog_bar=True, batch_size=size)
        penalty = self.fusion.regularization()
        self.log("train/regularization", penalty.detach(), batch_size=size)
        loss = out.loss + penalty
        if out.candidates:
            self.log("train/miner_discarded_share", out.discarded_share, batch_size=size)
        if hasattr(self.fusion, "lam") and isinstance(self.fusion.lam, Tensor):
            self.log("train/lambda", self.fusion.lam.detach(), batch_size=size)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        # The loss without the memory: validation must not enqueue into it.
        embeddings = self.embed(batch)
        loss = self.metric_loss.loss(embeddings, batch["labels"])
        self.log("val/loss", loss, sync_dist=True, batch_size=len(batch["labels"]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = fusion_spec(self.fusion)


def fusion_spec(fusion: Fusion) -> dict:
    """Class path, constructor arguments (read back from same-named attributes) and state of a fusion."""
    return {"class_path": fusion_class_path(fusion), "init_args": fusion_init_args(fusion),
            "state_dict": {k: v.detach().cpu().clone() for k, v in fusion.state_dict().items()}}


def load_fusion_from_checkpoint(path: str | Path) -> Fusion:
    """The trained fusion of a train.py checkpoint, in eval mode, without Lightning or the training config."""
    path = Path(path)
    if not path.is_file():
        raise InputError("checkpoint not found", path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises assorted errors for non-checkpoints
        raise InputError(f"cannot read checkpoint ({str(exc).strip().splitlines()[0]})", path) from None
    spec = checkpoint.get(CHECKPOINT_KEY) if isinstance(checkpoint, dict) else None
    if spec is None:
        raise InputError(f"not a fuseloc training checkpoint (no {CHECKPOINT_KEY!r} entry)", path)
    try:
        cls = fusion_class(spec["class_path"])
    except (ImportError, AttributeError):
        raise InputError(f"checkpoint fusion class {spec['class_path']!r} not found", path) from None
    fusion = cls(**spec["init_args"])
    fusion.load_state_dict(spec["state_dict"])
    return fusion.eval()
