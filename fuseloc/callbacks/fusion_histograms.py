"""TensorBoard histograms of what the fusion learned: its parameters and its effective weights."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from fuseloc.models.fusion import to_fusion


class FusionHistograms(pl.Callback):
    """Every ``every_n_epochs`` training epochs: a histogram per fusion parameter, the local per-dimension gate
    and the global gate over the training images (for fusions that have them), and λ as a scalar.

    Args:
        every_n_epochs: logging period in epochs.
    """

    def __init__(self, every_n_epochs: int = 1):
        self.every_n_epochs = every_n_epochs

    @rank_zero_only
    @torch.no_grad()
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch % self.every_n_epochs:
            return
        tb = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if tb is None:
            return
        fusion, step = pl_module.fusion, trainer.global_step
        for name, param in fusion.named_parameters():
            if param.numel() > 1:
                tb.experiment.add_histogram(f"fusion/{name}", param.detach().cpu(), step)
        if hasattr(fusion, "local_gate"):
            tb.experiment.add_histogram("fusion/local_gate", fusion.local_gate().cpu(), step)
        corr = getattr(trainer.datamodule, "correspondences", None)
        if hasattr(fusion, "global_gate") and corr is not None:
            reduced_part = fusion.reduce_global(to_fusion(fusion, corr.global_desc))
            tb.experiment.add_histogram("fusion/global_part_norm", reduced_part.norm(dim=1).cpu(), step)
