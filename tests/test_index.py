"""faiss index kinds against brute-force numpy 1-NN on small known data; match filtering against naive loops."""

import logging
from dataclasses import replace

import numpy as np
import pytest

from fuseloc.localize.index import (
    IndexConfig,
    MapIndex,
    SearchResult,
    gpu_available,
    load_or_build_index,
    split_lists,
    train_coarse_centroids,
)
from fuseloc.localize.pipeline import filter_matches


@pytest.fixture(autouse=True)
def _one_faiss_thread():
    """Tiny indexes gain nothing from threads, and on a busy CI box spinning OpenMP threads make k-means crawl."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def _data(num_points=2000, dim=32, num_queries=200, noise=0.02, seed=0):
    rng = np.random.default_rng(seed)
    points = rng.standard_normal((num_points, dim)).astype(np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    truth = rng.integers(0, num_points, num_queries)
    queries = points[truth] + noise * rng.standard_normal((num_queries, dim)).astype(np.float32)
    return points, queries


def _brute_force(points, queries, k=1):
    d = ((queries[:, None, :].astype(np.float64) - points[None].astype(np.float64)) ** 2).sum(-1)
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, idx, 1), idx


def test_flat_is_exact_on_arbitrary_queries():
    points, _ = _data()
    queries = np.random.default_rng(1).standard_normal((200, 32)).astype(np.float32)  # no true match: hard case
    dist, idx = _brute_force(points, queries, k=2)
    result = MapIndex(points, IndexConfig(kind="flat")).search(queries, k=2)
    np.testing.assert_array_equal(result.indices, idx)
    np.testing.assert_allclose(result.distances, dist, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("config", [
    IndexConfig(kind="ivf", nlist=32, nprobe=32),  # every list visited: exact
    IndexConfig(kind="ivf", nlist=32, nprobe=4),
    IndexConfig(kind="ivf", nlist=32, nprobe=32, codec="fp32"),  # IVF-Flat, every list: exact
    IndexConfig(kind="ivf", nlist=32, nprobe=4, codec="8bit"),
    IndexConfig(kind="hnsw", ef_search=128),
    IndexConfig(kind="ivfpq", nlist=16, nprobe=16, pq_m=8, pq_bits=6),
], ids=["ivf-all-lists", "ivf", "ivf-flat-all-lists", "ivf-8bit", "hnsw", "ivfpq"])
def test_approximate_kinds_find_the_true_neighbour(config):
    points, queries = _data()
    _, idx = _brute_force(points, queries)
    index = MapIndex(points, config)
    assert index.kind == config.kind
    result = index.search(queries)
    assert result.indices.shape == (len(queries), 1) and result.indices.dtype == np.int64
    agreement = (result.indices[:, 0] == idx[:, 0]).mean()
    # Every list visited: float32 and float16 storage give the exact neighbours (float16 is the map's own precision).
    assert agreement >= (1.0 if config.nprobe == config.nlist and config.kind == "ivf" else 0.97), agreement


def test_float16_lists_store_a_float16_map_exactly_and_take_half_of_ivf_flat():
    import faiss

    points, _ = _data()
    half = points.astype(np.float16)
    index = MapIndex(half, IndexConfig(kind="ivf", nlist=16))
    ivf = faiss.extract_index_ivf(index.index)
    ivf.make_direct_map()
    # The index is the map's descriptor store: id i decodes to map row i, bit for bit.
    np.testing.assert_array_equal(ivf.reconstruct_n(0, len(half)).astype(np.float16), half)
    flat_lists = MapIndex(half, IndexConfig(kind="ivf", nlist=16, codec="fp32"))
    eight = MapIndex(half, IndexConfig(kind="ivf", nlist=16, codec="8bit"))
    assert ivf.code_size == 2 * points.shape[1] and faiss.extract_index_ivf(eight.index).code_size == points.shape[1]
    assert eight.nbytes() < index.nbytes() < flat_lists.nbytes()


def test_ivf_search_equals_faiss_own_search_and_does_not_depend_on_the_thread_count(monkeypatch):
    """MapIndex searches an IVF index's flat list centres on one thread, then scans the lists: the results are
    faiss' own single-threaded search, bit for bit, whatever the thread count (what lets several processes with
    a share of the cores each give one process's results)."""
    import faiss

    # BLAS sums change with the thread count, so the list centres must be searched on one thread (a tie between
    # two lists is too rare to provoke here: check the mechanism)
    centre_search_threads = []
    flat_search = faiss.IndexFlatL2.search

    def recording_search(self, x, k, **kwargs):
        centre_search_threads.append(faiss.omp_get_max_threads())
        return flat_search(self, x, k, **kwargs)

    points, queries = _data(num_points=4000, num_queries=600, noise=0.3)
    for codec in ("fp16", "8bit", "fp32"):
        index = MapIndex(points, IndexConfig(kind="ivf", nlist=64, nprobe=6, codec=codec))
        assert index.thread_invariant
        reference = index.index.search(queries, 2)  # faiss' own search, one thread (the autouse fixture)
        monkeypatch.setattr(faiss.IndexFlatL2, "search", recording_search)
        for threads in (1, 2, 3):
            faiss.omp_set_num_threads(threads)
            result = index.search(queries, k=2)
            assert faiss.omp_get_max_threads() == threads  # the caller's setting is restored
            assert result.distances.tobytes() == reference[0].tobytes()
            assert result.indices.tobytes() == reference[1].tobytes()
        monkeypatch.undo()
        faiss.omp_set_num_threads(1)
    assert centre_search_threads == [1] * 9
    assert MapIndex(points, IndexConfig(kind="ivf", nlist=64, coarse_quantizer="hnsw")).thread_invariant
    assert not MapIndex(points, IndexConfig(kind="flat")).thread_invariant  # BLAS sums depend on the thread count
    assert MapIndex(points, IndexConfig(kind="hnsw")).thread_invariant


def test_cached_index_loads_by_digest_without_reading_the_descriptors(tmp_path):
    from fuseloc.cachekeys import array_digest

    points, queries = _data()
    config = IndexConfig(kind="ivf", nlist=16, nprobe=16)
    built = load_or_build_index(points, config, tmp_path, digest=array_digest(points))
    # Same digest, other (garbage) content of the same shape: the cache answers from the digest alone.
    garbage = np.full_like(points, np.nan)
    loaded = load_or_build_index(garbage, config, tmp_path, digest=array_digest(points))
    assert len(list(tmp_path.iterdir())) == 1
    np.testing.assert_array_equal(loaded.search(queries).indices, built.search(queries).indices)
    assert config.build_key(2000, 32) != replace(config, codec="8bit").build_key(2000, 32)


def test_auto_is_flat_for_small_maps_and_ivf_above_the_threshold():
    points, queries = _data(num_points=2000)
    assert MapIndex(points, IndexConfig(kind="auto")).kind == "flat"
    big = MapIndex(points, IndexConfig(kind="auto", flat_max_points=1000, nprobe=1000))
    # 16·sqrt(2000) ~ 716 -> 512 lists, capped at 2000 // 39 = 51 so every list gets enough training points.
    assert big.kind == "ivf" and big.nlist == 51
    _, idx = _brute_force(points, queries)
    np.testing.assert_array_equal(big.search(queries).indices[:, 0], idx[:, 0])


def test_nlist_never_exceeds_what_the_training_set_supports():
    assert IndexConfig(kind="ivf").resolved_nlist(100) == 2
    assert IndexConfig(kind="ivf", nlist=7).resolved_nlist(10) == 7
    # Aachen size: 16·sqrt(1.6M) ~ 20239 -> 16384 lists, searched through an HNSW graph over the list centres.
    config = IndexConfig(kind="ivf")
    assert config.resolved_nlist(1_600_000) == 16384 and config.resolved_quantizer(16384) == "hnsw"
    assert config.resolved_quantizer(4096) == "flat"
    # GPU IVF wants a flat quantizer; without a GPU the request falls back to the CPU, where HNSW is faster.
    assert IndexConfig(use_gpu=True).resolved_quantizer(16384) == ("flat" if gpu_available() else "hnsw")
    # sqrt(nlist) lists per keypoint (128 of 16384 at Aachen's size: 97% agreement, bench_memory.py), at least 16
    assert [config.resolved_nprobe(n) for n in (8, 200, 297, 4096, 16384, 65536)] == [8, 16, 17, 64, 128, 256]
    assert IndexConfig(nprobe=40).resolved_nprobe(16384) == 40 and IndexConfig(nprobe=40).resolved_nprobe(20) == 20


@pytest.mark.parametrize("sizes,total", [([5, 1, 1], 4), ([100, 10, 1, 1], 50), ([3, 3, 3], 9), ([40, 2], 3)])
def test_list_split_is_proportional_and_feasible(sizes, total):
    sizes = np.array(sizes)
    counts = split_lists(sizes, total)
    assert counts.sum() == total and (counts >= 1).all() and (counts <= sizes).all()
    # No group is more than one list away from its proportional share (when the bounds allow it).
    share = sizes / sizes.sum() * total
    assert (np.abs(counts - np.clip(share, 1, sizes)) < 1 + 1e-9).all()


def test_two_level_training_gives_every_list_a_centre_and_exact_search_when_all_lists_are_visited():
    rng = np.random.default_rng(0)
    sample = rng.standard_normal((2048 * 3, 8)).astype(np.float32)
    centres = train_coarse_centroids(sample, 2048, niter=4)
    assert centres.shape == (2048, 8) and np.isfinite(centres).all()
    assert len(np.unique(centres.round(6), axis=0)) == 2048
    with pytest.raises(ValueError, match="at least 2048 training points"):
        train_coarse_centroids(sample[:100], 2048)


def test_hnsw_coarse_quantizer_is_exact_when_every_list_is_visited():
    points, queries = _data()
    _, idx = _brute_force(points, queries)
    index = MapIndex(points, IndexConfig(kind="ivf", nlist=40, nprobe=40, coarse_quantizer="hnsw"))
    np.testing.assert_array_equal(index.search(queries).indices[:, 0], idx[:, 0])
    # The narrow beam used while adding points does not stay: changing the search settings afterwards searches
    # exactly as an index built with them.
    index.set_search(nprobe=10)
    fresh = MapIndex(points, IndexConfig(kind="ivf", nlist=40, nprobe=10, coarse_quantizer="hnsw"))
    np.testing.assert_array_equal(index.search(queries).indices, fresh.search(queries).indices)


def test_index_cache_is_keyed_by_descriptors_and_build_settings_not_search_settings(tmp_path, monkeypatch):
    points, queries = _data()
    config = IndexConfig(kind="ivf", nlist=32, nprobe=4)
    built = load_or_build_index(points, config, tmp_path)
    files = sorted(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".faiss"
    stamp = files[0].stat().st_mtime_ns
    with monkeypatch.context() as patch:  # a second build would fail: the cached file must be read instead
        patch.setattr(MapIndex, "__init__", lambda *a, **k: pytest.fail("rebuilt an index that is cached"))
        loaded = load_or_build_index(points, IndexConfig(kind="ivf", nlist=32, nprobe=32), tmp_path)
    assert sorted(tmp_path.iterdir()) == files and files[0].stat().st_mtime_ns == stamp  # nprobe is not in the key
    assert loaded.index.nprobe == 32 and loaded.nlist == 32
    built.set_search(nprobe=32)
    np.testing.assert_array_equal(loaded.search(queries).indices, built.search(queries).indices)
    load_or_build_index(points, IndexConfig(kind="ivf", nlist=16), tmp_path)
    moved = points.copy()
    moved[0] += 1
    load_or_build_index(moved, config, tmp_path)
    assert len(list(tmp_path.iterdir())) == 3  # other lists, other descriptors: other files
    load_or_build_index(points, IndexConfig(kind="flat"), tmp_path)
    assert len(list(tmp_path.iterdir())) == 3  # flat indexes are rebuilt, never cached


def test_cached_index_of_another_kind_is_rejected_and_rebuilt(tmp_path, caplog):
    points, _ = _data()
    ivf = IndexConfig(kind="ivf", nlist=16, nprobe=16)
    load_or_build_index(points, ivf, tmp_path)
    cached = next(tmp_path.iterdir())
    MapIndex(points, IndexConfig(kind="ivfpq", nlist=16, pq_m=8, pq_bits=6)).save(cached)  # same name, wrong content
    with caplog.at_level(logging.WARNING, logger="fuseloc.localize.index"):
        index = load_or_build_index(points, ivf, tmp_path)
    assert "IndexIVFPQ" in caplog.text and "expected a IndexIVFScalarQuantizer" in caplog.text
    assert type(MapIndex.read_checked(cached, ivf, len(points), points.shape[1])).__name__ == "IndexIVFScalarQuantizer"
    flat_lists = replace(ivf, codec="fp32")
    with pytest.raises(ValueError, match="codec fp16"):  # IVF-SQ float16 on disk, IVF-Flat asked for
        MapIndex.read_checked(cached, flat_lists, len(points), points.shape[1])
    assert index.kind == "ivf"


def test_cache_write_failure_keeps_the_built_index(tmp_path, caplog, monkeypatch):
    points, queries = _data()

    def fail(self, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(MapIndex, "save", fail)
    with caplog.at_level(logging.WARNING, logger="fuseloc.localize.index"):
        index = load_or_build_index(points, IndexConfig(kind="ivf", nlist=16, nprobe=16), tmp_path)
    assert "could not cache" in caplog.text and "No space left" in caplog.text
    _, idx = _brute_force(points, queries)
    np.testing.assert_array_equal(index.search(queries).indices[:, 0], idx[:, 0])


def test_cache_key_holds_only_what_shapes_the_index():
    ivf = IndexConfig(kind="ivf", nlist=64)
    assert ivf.build_key(1000, 8) == replace(ivf, nprobe=3, ef_search=9, hnsw_m=8, pq_m=4).build_key(1000, 8)
    assert ivf.build_key(1000, 8) != replace(ivf, seed=1).build_key(1000, 8)
    assert ivf.build_key(1000, 8) != replace(ivf, coarse_quantizer="hnsw").build_key(1000, 8)
    hnsw = IndexConfig(kind="hnsw")
    assert hnsw.build_key(1000, 8) == replace(hnsw, nlist=7, seed=4).build_key(1000, 8)
    assert hnsw.build_key(1000, 8) != replace(hnsw, hnsw_m=16).build_key(1000, 8)


def test_unreadable_index_cache_is_rebuilt_with_a_warning(tmp_path, caplog):
    points, queries = _data()
    config = IndexConfig(kind="ivf", nlist=32, nprobe=32)
    load_or_build_index(points, config, tmp_path)
    cached = next(tmp_path.iterdir())
    cached.write_bytes(cached.read_bytes()[:100])  # a run killed while another process was copying it
    with caplog.at_level(logging.WARNING, logger="fuseloc.localize.index"):
        index = load_or_build_index(points, config, tmp_path)
    assert "unreadable" in caplog.text and str(cached) in caplog.text
    _, idx = _brute_force(points, queries)
    np.testing.assert_array_equal(index.search(queries).indices[:, 0], idx[:, 0])
    assert cached.stat().st_size > 1000  # replaced by the rebuilt index


def test_float16_map_searches_like_its_float32_widening():
    points, queries = _data()
    half = points.astype(np.float16)
    from_half = MapIndex(half, IndexConfig(kind="flat")).search(queries)
    from_widened = MapIndex(half.astype(np.float32), IndexConfig(kind="flat")).search(queries)
    np.testing.assert_array_equal(from_half.indices, from_widened.indices)
    np.testing.assert_array_equal(from_half.distances, from_widened.distances)


def test_empty_queries_and_memory_estimate():
    points, _ = _data(num_points=500)
    index = MapIndex(points, IndexConfig(kind="flat"))
    empty = index.search(np.zeros((0, 32), np.float32), k=3)
    assert empty.indices.shape == (0, 3) and empty.distances.shape == (0, 3)
    assert index.nbytes() == 500 * 32 * 4


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="unknown index kind"):
        MapIndex(np.zeros((10, 4), np.float32), IndexConfig(kind="lsh"))  # type: ignore[arg-type]


@pytest.mark.skipif(gpu_available(), reason="checks the CPU fallback; this machine has a GPU")
@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs faiss-gpu and a CUDA device")
def test_gpu_flat_and_ivf_match_brute_force():
    points, queries = _data()
    _, idx = _brute_force(points, queries)
    for config in (IndexConfig(kind="flat", use_gpu=True), IndexConfig(kind="ivf", nlist=32, nprobe=32, use_gpu=True)):
        index = MapIndex(points, config)
        assert index.on_gpu
        np.testing.assert_array_equal(index.search(queries).indices[:, 0], idx[:, 0])


def _naive_filter(indices, distances, ratio, unique):
    kept = []
    for q in range(len(indices)):
        if indices[q, 0] < 0:
            continue
        if ratio < 1 and indices.shape[1] > 1 and indices[q, 1] >= 0 and distances[q, 0] > ratio**2 * distances[q, 1]:
            continue
        kept.append(q)
    if unique:
        best = {}
        for q in kept:
            p = indices[q, 0]
            if p not in best or distances[q, 0] < distances[best[p], 0]:
                best[p] = q
        kept = sorted(best.values())
    return np.array(kept, np.int64)


@pytest.mark.parametrize("ratio,unique", [(1.0, False), (1.0, True), (0.8, False), (0.8, True)])
def test_filter_matches_equals_naive_loop(ratio, unique):
    rng = np.random.default_rng(3)
    indices = rng.integers(-1, 40, (500, 2))
    distances = np.sort(rng.uniform(0, 2, (500, 2)).astype(np.float32), axis=1)
    distances[::7, 0] = distances[::7, 1]  # exact ties with the second neighbour
    kept = filter_matches(SearchResult(distances, indices), ratio, unique)
    np.testing.assert_array_equal(kept, _naive_filter(indices, distances, ratio, unique))
