"""The HTTP service: a real uvicorn server on 127.0.0.1 in this process, a real HTTP client (urllib)."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from fixtures.bundle import CAMERA_STRING, assert_same_pose, evaluated, export_one_method
from fixtures.scripts import load_script

import fuseloc
from fuseloc.service import BackgroundServer, ServiceConfig, post_image


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return export_one_method(tmp_path_factory.mktemp("service"))


class CountingBundle:
    """A bundle that records how many localize calls run at once."""

    def __init__(self, bundle, delay: float = 0.0):
        self.bundle, self.delay = bundle, delay
        self.active = self.peak = 0
        self.lock = threading.Lock()

    def describe(self) -> dict:
        return self.bundle.describe()

    def localize(self, *args, **kwargs):
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            time.sleep(self.delay)
            return self.bundle.localize(*args, **kwargs)
        finally:
            with self.lock:
                self.active -= 1


def test_service_answers_like_the_offline_bundle(exported):
    data, method_dir, bundle_path = exported
    bundle = fuseloc.load_bundle(bundle_path)
    expected = evaluated(method_dir)
    with BackgroundServer(bundle, ServiceConfig(port=0)) as server:
        assert server.url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(server.url + "/health", timeout=10) as response:
            health = json.load(response)
        assert health["status"] == "ok" and health["method"] == "fused-lam0.5" and health["points"] > 0
        for name in sorted(expected):
            status, record = post_image(server.url, (data / "images" / name).read_bytes(), camera=CAMERA_STRING, name=name)
            assert status == 200 and record["name"] == name and record["camera_source"] == "given"
            assert_same_pose(record, expected[name])


def test_bad_requests_get_4xx_with_one_line_messages(exported):
    data, _, bundle_path = exported
    image = (data / "images" / "query" / "0.png").read_bytes()
    with BackgroundServer(fuseloc.load_bundle(bundle_path), ServiceConfig(port=0, max_image_bytes=len(image) - 1)) as server:
        cases = [
            (b"not an image", {"camera": CAMERA_STRING}, 400, "cannot decode image"),
            (b"", {"camera": CAMERA_STRING}, 400, "empty request body"),
            (image[:100], {"camera": "PINHOLE 320 240 -260 260 160 120"}, 400, "focal length must be positive"),
            (image[:100], {"camera": "PINHOLE 320"}, 400, "bad camera"),
            (image, {"camera": CAMERA_STRING}, 413, "limit"),
        ]
        for body, params, code, message in cases:
            status, reply = post_image(server.url, body, **params)
            assert status == code and message in reply["detail"] and "\n" not in reply["detail"], (params, reply)
    with BackgroundServer(fuseloc.load_bundle(bundle_path), ServiceConfig(port=0)) as server:
        status, reply = post_image(server.url, image, camera="PINHOLE 640 480 520 520 320 240", name="q0")
        assert status == 422 and reply["detail"].startswith("q0: image is 320x240 pixels but its camera says 640x480")
        status, reply = post_image(server.url, image)  # a PNG without EXIF: no intrinsics at all
        assert status == 422 and "no EXIF focal length" in reply["detail"]


@pytest.mark.parametrize("limit", [1, 2])
def test_concurrency_is_bounded(exported, limit):
    data, _, bundle_path = exported
    counting = CountingBundle(fuseloc.load_bundle(bundle_path), delay=0.05)
    image = (data / "images" / "query" / "2.png").read_bytes()
    with BackgroundServer(counting, ServiceConfig(port=0, max_concurrency=limit)) as server:
        with ThreadPoolExecutor(6) as pool:
            replies = list(pool.map(lambda _: post_image(server.url, image, camera=CAMERA_STRING), range(12)))
    assert all(status == 200 for status, _ in replies)
    assert len({json.dumps(r["qvec"]) for _, r in replies}) == 1
    assert counting.peak == limit  # never more at once, and the limit is used


def test_busy_service_refuses_beyond_its_queue(exported):
    data, _, bundle_path = exported
    counting = CountingBundle(fuseloc.load_bundle(bundle_path), delay=0.5)
    image = (data / "images" / "query" / "2.png").read_bytes()
    with BackgroundServer(counting, ServiceConfig(port=0, max_concurrency=1, max_queue=1)) as server:
        with ThreadPoolExecutor(5) as pool:
            statuses = sorted(s for s, _ in pool.map(lambda _: post_image(server.url, image, camera=CAMERA_STRING), range(5)))
    assert statuses.count(200) >= 2 and 503 in statuses and set(statuses) <= {200, 503}


def test_service_benchmark_runs_the_cli_server_and_checks_every_answer(exported, tmp_path, capsys):
    data, _, bundle_path = exported
    bench = load_script("benchmarks/bench_service")
    out = tmp_path / "rows.json"
    assert bench.main(["--bundle", str(bundle_path), "--queries", str(data / "queries_with_intrinsics.txt"),
                       "--clients", "1", "2", "--duration", "1", "--output", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["clients"] for r in rows] == [1, 2]
    for row in rows:
        assert row["requests"] > 0 and row["mismatches"] == 0 and row["errors"] == 0
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] and row["peak_rss_mb"] > 0
    assert "equal to offline" in capsys.readouterr().out
