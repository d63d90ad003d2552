"""Metric learning over 2D-3D correspondences with pytorch-metric-learning's losses and miners.

Samples are database observations: the embedding is the fused descriptor (local descriptor + its image's
global descriptor), the label is the observed 3D point. Any PML loss and miner can be plugged in; this module
adds what 2D-3D training needs on top: an optional cross-batch memory and the miner's health signal, the share
of candidate pairs or triplets it discards (near 100 % means the batch is too easy, or the margin too small).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pytorch_metric_learning.losses import BaseMetricLossFunction, CrossBatchMemory
from pytorch_metric_learning.miners import BaseMiner
from torch import Tensor, nn


@dataclass
class LossOutput:
    """Loss of one batch.

    Attributes:
        loss: scalar loss to minimise.
        mined: tuples the miner kept (pairs or triplets); -1 without a miner.
        candidates: tuples it could have kept.
        discarded_share: 1 - mined / candidates, in [0, 1]; NaN without a miner or without candidates.
    """

    loss: Tensor
    mined: int
    candidates: int
    discarded_share: float


def candidate_counts(labels: Tensor) -> tuple[int, int, int]:
    """(ordered positive pairs, ordered negative pairs, triplets (anchor, positive, negative)) of a batch."""
    same = labels[:, None] == labels[None, :]
    pos = same.sum(1) - 1
    neg = (~same).sum(1)
    return int(pos.sum()), int(neg.sum()), int((pos * neg).sum())


def count_mined(indices_tuple: tuple[Tensor, ...], labels: Tensor) -> tuple[int, int]:
    """(tuples a miner returned, tuples it could have returned) for PML's pair (4) or triplet (3) tuples."""
    pos_pairs, neg_pairs, triplets = candidate_counts(labels)
    if len(indices_tuple) == 3:
        return len(indices_tuple[0]), triplets
    if len(indices_tuple) == 4:
        return len(indices_tuple[0]) + len(indices_tuple[2]), pos_pairs + neg_pairs
    raise ValueError(f"miner returned {len(indices_tuple)} index tensors; expected 3 (triplets) or 4 (pairs)")


class MetricLoss(nn.Module):
    """A PML loss with an optional miner and cross-batch memory, in PML's call style.

    Args:
        loss: any PML loss (TripletMarginLoss, MultiSimilarityLoss, NTXentLoss, ContrastiveLoss...).
        miner: any PML miner, or None to use all pairs/triplets.
        memory_size: entries of PML's CrossBatchMemory (0 disables it); negatives then also come from
            recent batches' embeddings.
        embedding_size: dimension of the embeddings (needed by the memory).
    """

    def __init__(self, loss: BaseMetricLossFunction, miner: BaseMiner | None = None, memory_size: int = 0,
                 embedding_size: int = 128):
        super().__init__()
        self.loss = loss
        self.miner = miner
        self.memory = (CrossBatchMemory(loss, embedding_size, memory_size=memory_size, miner=miner)
                       if memory_size > 0 else None)

    def forward(self, embeddings: Tensor, labels: Tensor, ref_emb: Tensor | None = None,
                ref_labels: Tensor | None = None) -> LossOutput:
        """[B x E] embeddings with [B] labels; optional reference set [R x E], [R] (e.g. map points)."""
        mined, candidates, share = -1, 0, float("nan")
        indices = None
        if self.miner is not None:
            with torch.no_grad():
                indices = self.miner(embeddings, labels, ref_emb, ref_labels)
            if ref_emb is None:
                mined, candidates = count_mined(indices, labels)
                share = 1.0 - mined / candidates if candidates else float("nan")
        if self.memory is not None:
            if ref_emb is not None:
                raise ValueError("a cross-batch memory is its own reference set; do not pass ref_emb with it")
            loss = self.memory(embeddings, labels)
        else:
            # PML's miners return index tuples without gradients; the loss recomputes distances from them.
            loss = self.loss(embeddings, labels, indices, ref_emb, ref_labels)
        return LossOutput(loss, mined, candidates, share)
