"""Metric-learning batches over 2D-3D correspondences, and the loss/miner wrapper, against naive references."""

import itertools

import numpy as np
import pytest
import torch
from fixtures.toy import make_toy_scene
from pytorch_metric_learning import losses, miners

from fuseloc.data.correspondences import (
    BATCH_KEYS,
    BatchConfig,
    CorrespondenceBatches,
    Correspondences,
    gather_correspondences,
    mine_confusers,
)
from fuseloc.data.feature_cache import FeatureCache
from fuseloc.models.losses import MetricLoss, candidate_counts


@pytest.fixture(scope="module")
def toy_corr(tmp_path_factory):
    toy = make_toy_scene(tmp_path_factory.mktemp("toy"), num_points=300, duplicate_fraction=0.8, descriptor_noise=0.02)
    with FeatureCache(toy.local_path, toy.global_path) as cache:
        corr = gather_correspondences(toy.scene, cache, feature_tag="toy")
    return toy, corr


def test_correspondences_carry_the_observed_descriptors(toy_corr):
    toy, corr = toy_corr
    assert corr.num_observations == len(toy.scene.obs_point)
    # Toy descriptors are the point's descriptor plus small noise: each observation is near its own point.
    dist = np.linalg.norm(corr.local - toy.point_desc[corr.obs_point], axis=1)
    assert dist.max() < 0.3  # noise 0.02 per dimension; distinct unit descriptors are ~1.4 apart
    assert corr.global_desc.shape == (toy.scene.num_images, 16)


def test_confusers_are_look_alikes_far_away(toy_corr):
    toy, corr = toy_corr
    confusers = mine_confusers(corr, k=4, min_distance=2.0)
    half = 150
    n_dup = int(0.8 * 150)
    for p in range(n_dup):
        if corr.observations_per_point()[p] == 0 or corr.observations_per_point()[half + p] == 0:
            continue
        # The duplicated twin on the other wall is the nearest look-alike.
        assert confusers[p, 0] == half + p, p
    valid = confusers >= 0
    rows = np.nonzero(valid)[0]
    assert np.all(np.linalg.norm(corr.points_xyz[confusers[valid]] - corr.points_xyz[rows], axis=1) > 2.0)
    assert np.all(confusers[valid] != rows)


def test_batch_is_p_by_m_with_confusers_and_right_labels(toy_corr):
    toy, corr = toy_corr
    confusers = mine_confusers(corr, k=4, min_distance=2.0)
    batches = CorrespondenceBatches(corr, confusers, BatchConfig(points_per_batch=20, obs_per_point=3, confuser_fraction=0.5))
    batch = batches.sample(np.random.default_rng(0))
    assert set(batch) == set(BATCH_KEYS)
    labels = batch["labels"].numpy()
    points, counts = np.unique(labels, return_counts=True)
    assert len(points) == 20 and counts.max() <= 3
    # Rows are real observations: descriptor and image agree with the observation of that point.
    for row in range(len(labels)):
        obs = np.flatnonzero((corr.obs_point == labels[row]) & np.all(corr.local == batch["local"][row].numpy(), axis=1))
        assert len(obs) == 1
        image = corr.obs_image[obs[0]]
        np.testing.assert_array_equal(batch["global"][batch["global_index"][row]].numpy(), corr.global_desc[image])
    # Confuser points are a confuser of some non-confuser point in the batch.
    conf_points = set(labels[batch["is_confuser"].numpy()])
    anchor_points = set(labels[~batch["is_confuser"].numpy()])
    assert len(conf_points) == 10
    for c in conf_points:
        assert any(c in confusers[a] for a in anchor_points)


def test_batches_differ_per_epoch_and_rank_seed_is_stable(toy_corr):
    _, corr = toy_corr
    confusers = mine_confusers(corr, k=4, min_distance=2.0)
    config = BatchConfig(points_per_batch=8, batches_per_epoch=2)
    first, second = list(CorrespondenceBatches(corr, confusers, config)), None
    again = CorrespondenceBatches(corr, confusers, config)
    torch.testing.assert_close(list(again)[0]["labels"], first[0]["labels"])
    second = list(again)
    assert not torch.equal(second[0]["labels"], first[0]["labels"])


def test_no_point_with_two_observations_is_an_error():
    corr = Correspondences(np.eye(3, dtype=np.float32), np.arange(3), np.zeros(3, np.int64), np.ones((1, 2), np.float32),
                           np.zeros((3, 3)), ["a"])
    with pytest.raises(ValueError, match="two or more"):
        CorrespondenceBatches(corr, mine_confusers(corr))


def naive_counts(labels):
    pos = neg = trip = 0
    for a, b in itertools.permutations(range(len(labels)), 2):
        pos += labels[a] == labels[b]
        neg += labels[a] != labels[b]
    for a, p, n in itertools.permutations(range(len(labels)), 3):
        trip += labels[a] == labels[p] and labels[a] != labels[n]
    return pos, neg, trip


@pytest.mark.parametrize("labels", [[0, 0, 1, 1, 2, 2], [0, 0, 0, 1], [0, 1, 2, 3], [5]])
def test_candidate_counts_match_naive_enumeration(labels):
    assert candidate_counts(torch.tensor(labels)) == naive_counts(labels)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_triplet_loss_with_miner_reports_discarded_share(dtype):
    torch.manual_seed(0)
    labels = torch.arange(8).repeat_interleave(3)
    emb = torch.nn.functional.normalize(torch.randn(24, 16, dtype=dtype), dim=1).requires_grad_()
    miner = miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard")
    metric = MetricLoss(losses.TripletMarginLoss(margin=0.2), miner)
    out = metric(emb, labels)
    out.loss.backward()
    mined = miner(emb, labels)
    _, _, triplets = naive_counts(labels.tolist())
    assert out.candidates == triplets
    assert out.mined == len(mined[0])
    assert out.discarded_share == pytest.approx(1 - len(mined[0]) / triplets)
    assert emb.grad is not None and torch.isfinite(emb.grad).all()


def test_pair_miner_share_and_no_positive_edge_case():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    emb = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    metric = MetricLoss(losses.MultiSimilarityLoss(), miners.MultiSimilarityMiner())
    out = metric(emb, labels)
    a1, _, a2, _ = miners.MultiSimilarityMiner()(emb, labels)
    assert out.mined == len(a1) + len(a2) and out.candidates == 30
    # No two observations of one point: no positive pair, nothing to learn, a zero (finite) loss.
    distinct = MetricLoss(losses.TripletMarginLoss(), miners.TripletMarginMiner())(emb, torch.arange(6))
    assert distinct.candidates == 0 and np.isnan(distinct.discarded_share) and float(distinct.loss) == 0.0


@pytest.mark.parametrize("loss", [losses.NTXentLoss(), losses.ContrastiveLoss(), losses.MultiSimilarityLoss()])
def test_losses_with_cross_batch_memory(loss):
    torch.manual_seed(0)
    labels = torch.arange(4).repeat_interleave(2)
    metric = MetricLoss(loss, None, memory_size=32, embedding_size=8)
    batches = [torch.nn.functional.normalize(torch.randn(8, 8), dim=1) for _ in range(3)]
    for emb in batches:
        emb = emb.clone().requires_grad_()
        out = metric(emb, labels)
        out.loss.backward()
        assert torch.isfinite(out.loss) and emb.grad is not None and torch.isfinite(emb.grad).all()
    # three batches of 8 are queued, the queue (32) is not full yet
    assert int(metric.memory.queue_idx) == 24 and not metric.memory.has_been_filled
    # the queued embeddings take part: the last batch's loss is not the loss of that batch alone
    alone = MetricLoss(loss, None)(batches[-1], labels).loss
    assert not torch.isclose(out.loss.detach(), alone.detach())
