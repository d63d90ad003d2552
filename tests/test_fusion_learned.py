"""LearnedFusion against a plain-Python reference, its PCA start, and its round trips through maps and checkpoints."""

import math

import numpy as np
import pytest
import torch

from fuseloc.errors import InputError
from fuseloc.localize.fused_map import fusion_class_path, fusion_init_args, instantiate_fusion
from fuseloc.models.fusion import FixedFusion, LearnedFusion


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def naive_learned_fusion(fusion, local, global_):
    """The documented formula, one scalar at a time."""
    p = {k: v.detach().double().numpy() for k, v in fusion.state_dict().items()}
    d, g_dim = fusion.local_dim, fusion.global_dim
    lam = _sigmoid(float(p["lam_logit"]))
    r = [sum((global_[g] - p["global_mean"][g]) * p["global_projection"][g][j] for g in range(g_dim)) for j in range(d)]
    norm = math.sqrt(sum(v * v for v in r))
    r = [v / norm for v in r]
    gate_g = []
    for j in range(d):
        logit = p["global_gate_logit"][j] if fusion.per_dim_gate else 0.0
        if fusion.conditioned_gate:
            logit += p["gate_condition.bias"][j] + sum(p["gate_condition.weight"][j][k] * r[k] for k in range(d))
        gate_g.append(2 * _sigmoid(logit))
    out = []
    for row in local:
        if fusion.project_local:
            row = [sum(row[k] * p["local_projection"][k][j] for k in range(d)) for j in range(d)]
        fused = []
        for j in range(d):
            gate_l = 2 * _sigmoid(p["local_gate_logit"][j]) if fusion.per_dim_gate else 1.0
            fused.append(lam * gate_l * row[j] + (1 - lam) * gate_g[j] * r[j])
        if fusion.normalize_output:
            n = math.sqrt(sum(v * v for v in fused))
            fused = [v / n for v in fused]
        out.append(fused)
    return np.array(out).reshape(len(local), d)


def _randomized(seed=0, **kwargs):
    torch.manual_seed(seed)
    fusion = LearnedFusion(local_dim=4, global_dim=6, init_lam=0.3, **kwargs)
    fusion.fit(np.random.default_rng(seed).standard_normal((9, 6)))
    with torch.no_grad():
        for name, param in fusion.named_parameters():
            if name != "global_projection":
                param.add_(0.5 * torch.randn_like(param))
    return fusion


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("options", [
    {},
    {"conditioned_gate": True, "train_projection": True},
    {"project_local": True, "conditioned_gate": True},
    {"normalize_output": False, "conditioned_gate": False},
    {"per_dim_gate": False, "project_local": True, "conditioned_gate": True},
    {"per_dim_gate": False, "conditioned_gate": False},
])
def test_learned_fusion_matches_naive_loop(dtype, options):
    fusion = _randomized(**options).to(dtype)
    rng = np.random.default_rng(1)
    local, global_ = rng.standard_normal((5, 4)), rng.standard_normal(6)
    got = fusion(torch.tensor(local, dtype=dtype), torch.tensor(global_, dtype=dtype)[None]).detach().numpy()
    assert got.dtype == (np.float32 if dtype == torch.float32 else np.float64)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    np.testing.assert_allclose(got, naive_learned_fusion(fusion, local, global_), rtol=tol, atol=tol)


def test_empty_and_single_keypoint():
    fusion = _randomized()
    g = torch.randn(1, 6)
    assert fusion(torch.zeros(0, 4), g).shape == (0, 4)
    one = torch.randn(1, 4)
    np.testing.assert_allclose(fusion(one, g).detach().numpy(), naive_learned_fusion(fusion, one.numpy(), g[0].numpy()),
                               rtol=1e-5, atol=1e-6)


def test_per_image_reduction_then_per_keypoint_fuse_equals_forward():
    fusion = _randomized(project_local=True)
    local, globals_ = torch.randn(7, 4), torch.randn(3, 6)
    image = torch.tensor([0, 2, 1, 1, 0, 2, 2])
    batched = fusion.fuse(local, fusion.reduce_global(globals_)[image])
    one_by_one = torch.cat([fusion(local[i : i + 1], globals_[image[i] : image[i] + 1]) for i in range(7)])
    torch.testing.assert_close(batched, one_by_one)


@pytest.mark.parametrize("lam", [0.2, 0.5, 0.8])
def test_starts_as_the_fixed_pca_fusion(lam):
    """Before training, without output normalisation, it is FixedFusion with the same λ and PCA."""
    db = np.random.default_rng(3).standard_normal((12, 10))
    fixed, learned = FixedFusion(5, 10, lam=lam), LearnedFusion(5, 10, init_lam=lam, normalize_output=False)
    fixed.fit(db)
    learned.fit(db)
    assert learned.is_fitted
    local, g = torch.randn(6, 5), torch.randn(2, 10)
    for i in range(2):
        torch.testing.assert_close(learned(local, g[i : i + 1]), fixed(local, g[i : i + 1]), rtol=1e-5, atol=1e-6)


def test_output_is_unit_norm():
    fusion = _randomized()
    out = fusion(torch.randn(20, 4) * 5, torch.randn(1, 6))
    torch.testing.assert_close(out.norm(dim=1), torch.ones(20))


def test_map_round_trip_rebuilds_identical_fusion():
    fusion = _randomized(project_local=True)
    state = {k: v.detach().numpy() for k, v in fusion.state_dict().items()}
    rebuilt = instantiate_fusion(fusion_class_path(fusion), fusion_init_args(fusion), state)
    assert fusion_init_args(rebuilt) == fusion_init_args(fusion)
    local, g = torch.randn(3, 4), torch.randn(1, 6)
    torch.testing.assert_close(rebuilt(local, g), fusion(local, g))


def test_argument_checks():
    with pytest.raises(InputError, match="init_lam"):
        LearnedFusion(4, 6, init_lam=1.0)
    with pytest.raises(InputError, match="dimension mismatch"):
        LearnedFusion(4, 6).fit(np.zeros((3, 7)))


def test_frozen_projection_is_not_trainable():
    fusion = LearnedFusion(4, 6, train_projection=False)
    assert not fusion.global_projection.requires_grad
    assert all(p.requires_grad for n, p in fusion.named_parameters() if n != "global_projection")


def test_projection_decay_measures_the_distance_from_the_pca_start():
    rng = np.random.default_rng(0)
    fusion = LearnedFusion(4, 6, projection_decay=0.5, project_local=True)
    fusion.fit(rng.standard_normal((20, 6)).astype(np.float32))
    assert float(fusion.regularization()) == 0.0  # at the PCA start and the identity
    with torch.no_grad():
        fusion.global_projection[0, 0] += 2.0
        fusion.local_projection[1, 2] += 1.0
    assert float(fusion.regularization()) == pytest.approx(0.5 * (4.0 + 1.0))
    assert float(LearnedFusion(4, 6, projection_decay=0.0).regularization()) == 0.0
    with pytest.raises(InputError, match="projection_decay"):
        LearnedFusion(4, 6, projection_decay=-1.0)


def test_a_fusion_saved_before_the_pca_start_was_kept_loads():
    fusion = LearnedFusion(4, 6)
    fusion.fit(np.random.default_rng(0).standard_normal((20, 6)).astype(np.float32))
    state = {k: v for k, v in fusion.state_dict().items() if k != "initial_projection"}
    again = LearnedFusion(4, 6)
    again.load_state_dict(state)
    torch.testing.assert_close(again.initial_projection, fusion.global_projection.detach())


def _reference_whitening(samples, places, out_dim, pca_dim, shrinkage):
    """The learned whitening spelled out: covariance PCA, the within-place scatter place by place, the inverse
    matrix square root by scipy, then PCA of the whitened samples."""
    from scipy.linalg import sqrtm

    x = np.asarray(samples, np.float64)
    mean = x.mean(0)
    values, vectors = np.linalg.eigh(np.cov(x.T, bias=True))
    basis = vectors[:, np.argsort(values)[::-1][:pca_dim]]
    scatter, count = np.zeros((pca_dim, pca_dim)), 0
    for place in set(places.tolist()) - {-1}:
        members = x[places == place] @ basis
        if len(members) < 2:
            continue
        for row in members:
            d = row - members.mean(0)
            scatter += np.outer(d, d)
            count += 1
    scatter /= count
    scatter = (1 - shrinkage) * scatter + shrinkage * np.trace(scatter) / pca_dim * np.eye(pca_dim)
    whiten = np.real(np.linalg.inv(sqrtm(scatter)))
    y = (x - mean) @ basis @ whiten
    values, vectors = np.linalg.eigh(np.cov(y.T, bias=True))
    projection = basis @ whiten @ vectors[:, np.argsort(values)[::-1][:out_dim]]
    signs = np.sign(projection[np.abs(projection).argmax(0), np.arange(out_dim)])
    return mean, projection * signs


@pytest.mark.parametrize("num_samples", [9, 40])  # fewer samples than dimensions (SVD route) and more (scatter route)
def test_whitening_projection_matches_a_direct_computation(num_samples):
    from fuseloc.models.fusion import whitening_projection

    rng = np.random.default_rng(num_samples)
    samples = rng.standard_normal((num_samples, 12)) * np.linspace(3, 0.5, 12)
    places = rng.integers(-1, num_samples // 3, num_samples)  # some places seen once, some samples of none
    pca_dim = min(12, num_samples - 1)
    mean, projection = whitening_projection(samples, places, 3, shrinkage=0.1)
    ref_mean, ref_projection = _reference_whitening(samples, places, 3, pca_dim, 0.1)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(projection, ref_projection, rtol=1e-3, atol=1e-4)
    with pytest.raises(InputError, match="two or more"):
        whitening_projection(samples, np.arange(num_samples), 3)


def test_whitening_ignores_what_changes_with_the_condition():
    """Places differ in every direction; the 'night' version of a place adds a strong, varying offset along one
    direction. PCA keeps that direction first and confuses places; the whitening learned from (day, night)
    images of the same places removes it, so a night image's nearest day image is its own place."""
    from fuseloc.models.fusion import pca_projection, whitening_projection

    rng = np.random.default_rng(0)
    places, dim, out = 40, 16, 4
    day = rng.standard_normal((places, dim))
    direction = rng.standard_normal(dim)
    direction /= np.linalg.norm(direction)
    night = day + rng.uniform(-8, 8, (places, 1)) * direction + 0.05 * rng.standard_normal((places, dim))

    def recall(mean, projection):
        d, n = (day - mean) @ projection, (night - mean) @ projection
        nearest = ((n[:, None] - d[None]) ** 2).sum(2).argmin(1)
        return float((nearest == np.arange(places)).mean())

    both = np.concatenate([day, night])
    assert recall(*pca_projection(both, out)) < 0.5
    assert recall(*whitening_projection(both, np.r_[np.arange(places), np.arange(places)], out)) > 0.9


def test_fit_learns_the_whitening_from_same_place_images_and_falls_back_to_pca():
    from fuseloc.models.fusion import pca_projection, whitening_projection

    rng = np.random.default_rng(1)
    db = rng.standard_normal((10, 6)).astype(np.float32)
    other = (db[[0, 2, 4]] + 0.1 * rng.standard_normal((3, 6))).astype(np.float32)
    same_place = np.array([0, -1, 4])  # the second image shows no map place: left out
    fusion = LearnedFusion(3, 6)
    fusion.fit(db, global_other=other, same_place=same_place)
    _, expected = whitening_projection(np.concatenate([db, other[[0, 2]]]), np.r_[np.arange(10), 0, 4], 3,
                                       shrinkage=fusion.whitening_shrinkage)
    np.testing.assert_allclose(fusion.global_projection.detach().numpy(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fusion.initial_projection, fusion.global_projection.detach())
    _, pca = pca_projection(db, 3)
    for fallback in (LearnedFusion(3, 6), LearnedFusion(3, 6, init="pca")):
        # without pairs, or asked for PCA: the fixed fusion's PCA
        pairs = {} if fallback.init == "whitening" else {"global_other": other, "same_place": same_place}
        fallback.fit(db, **pairs)
        np.testing.assert_allclose(fallback.global_projection.detach().numpy(), pca, rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="init"):
        LearnedFusion(3, 6, init="lda")
    with pytest.raises(InputError, match="whitening_shrinkage"):
        LearnedFusion(3, 6, whitening_shrinkage=2.0)


def test_whitening_with_fewer_samples_than_output_dimensions_leaves_the_rest_zero():
    from fuseloc.models.fusion import whitening_projection

    rng = np.random.default_rng(2)
    samples = rng.standard_normal((3, 8))
    _, projection = whitening_projection(samples, np.array([0, 0, 1]), 4)
    assert np.isfinite(projection).all()
    assert projection[:, :2].any(0).all() and not projection[:, 2:].any()
