import numpy as np
import pytest
import torch

from fuseloc.errors import InputError
from fuseloc.models.fusion import (
    FixedFusion,
    gaussian_projection,
    pca_projection,
    random_selection,
    shuffled_selection,
)


def naive_fixed_fusion(local, global_, lam, mean, projection):
    out = []
    for row in local:
        reduced = [sum((global_[g] - mean[g]) * projection[g][d] for g in range(len(global_))) for d in range(len(row))]
        norm = sum(v * v for v in reduced) ** 0.5
        out.append([lam * row[d] + (1 - lam) * reduced[d] / norm for d in range(len(row))])
    return np.array(out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
def test_fixed_fusion_matches_naive_loop(dtype, lam):
    rng = np.random.default_rng(1)
    db_global = rng.standard_normal((10, 6))
    fusion = FixedFusion(local_dim=3, global_dim=6, lam=lam).to(dtype)
    fusion.fit(db_global)
    local = rng.standard_normal((4, 3))
    g = rng.standard_normal(6)
    got = fusion(torch.tensor(local, dtype=dtype), torch.tensor(g, dtype=dtype)[None]).numpy()
    expected = naive_fixed_fusion(local, g, lam, fusion.global_mean.numpy(), fusion.projection.numpy())
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_pca_against_covariance_eigenvectors():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 5)) * np.array([5, 3, 1, 0.5, 0.1])
    mean, proj = pca_projection(x, 2)
    cov = np.cov((x - x.mean(0)).T)
    vals, vecs = np.linalg.eigh(cov)
    top = vecs[:, ::-1][:, :2]
    np.testing.assert_allclose(np.abs(proj.T @ top), np.eye(2), atol=1e-3)
    np.testing.assert_allclose(mean, x.mean(0), atol=1e-6)


def test_pca_pads_with_zeros_when_fewer_samples_than_dims():
    _, proj = pca_projection(np.random.default_rng(0).standard_normal((3, 8)), 5)
    assert np.all(proj[:, 3:] == 0)


def test_random_selection_picks_distinct_coordinates():
    sel = random_selection(10, 4, seed=3)
    assert sel.sum() == 4 and np.all(sel.sum(0) == 1) and np.all(sel.sum(1) <= 1)


def test_gaussian_projection_preserves_norm_on_average():
    p = gaussian_projection(256, 128, seed=0)
    x = np.random.default_rng(1).standard_normal((100, 256))
    ratio = np.linalg.norm(x @ p, axis=1) / np.linalg.norm(x, axis=1)
    assert abs(ratio.mean() - 1) < 0.05


def test_lambda_range_and_dimension_checks():
    with pytest.raises(InputError):
        FixedFusion(4, 8, lam=1.5)
    with pytest.raises(InputError, match="dimension mismatch"):
        FixedFusion(4, 8).fit(np.zeros((5, 9)))


def test_shuffled_selection_is_the_authors_legacy_numpy_shuffle():
    # Pinned: np.random.seed(0); idx = np.arange(10); np.random.shuffle(idx); idx[:4] -> [2, 8, 4, 9].
    sel = shuffled_selection(10, 4, seed=0)
    assert [int(np.flatnonzero(sel[:, d])[0]) for d in range(4)] == [2, 8, 4, 9]
    assert sel.sum() == 4
    # The same as their code (global legacy state), for a larger G, in their (unsorted) order.
    state = np.random.get_state()
    try:
        np.random.seed(0)
        order = np.arange(300)
        np.random.shuffle(order)
    finally:
        np.random.set_state(state)
    got = shuffled_selection(300, 64, seed=0)
    np.testing.assert_array_equal(got.argmax(0), order[:64])
    with pytest.raises(InputError):
        shuffled_selection(4, 8)


def test_paper_fusion_is_unnormalised_selection():
    # λ·l + (1-λ)·g[idx]: no centring, no re-normalisation of the reduced part (the authors' operating point).
    rng = np.random.default_rng(2)
    fusion = FixedFusion(local_dim=5, global_dim=40, lam=0.4, reduction="shuffle", normalize_reduced=False)
    fusion.fit(rng.standard_normal((6, 40)))  # nothing to fit: the selection is fixed by the seed
    local = rng.standard_normal((3, 5))
    g = rng.standard_normal(40)
    np.random.seed(0)
    idx = np.arange(40)
    np.random.shuffle(idx)
    expected = [[0.4 * row[d] + 0.6 * g[idx[d]] for d in range(5)] for row in local]
    got = fusion(torch.tensor(local, dtype=torch.float32), torch.tensor(g, dtype=torch.float32)[None]).numpy()
    np.testing.assert_allclose(got, np.array(expected), rtol=1e-5, atol=1e-6)
