"""Does fuseloc's R2D2 reproduce the official multi-scale extraction? Keypoint and descriptor agreement.

    python benchmarks/check_reference_features.py --weights ../shared/weights/r2d2_WASF_N16.pt \
        --reference ../shared/reference/r2d2_official_multiscale.h5 [--images DIR] [--names 0000.jpg]

The reference h5 holds, per image (group named by file name): ``keypoints`` (N, 2) as the official
``extract.py`` returns them (level pixel index times W / w_level, no half-pixel shift), ``scales`` (32 / s),
``descriptors`` (128, N), ``scores``, ``image_size`` (W, H); its root attributes state the settings and the
convention. Each reference keypoint is moved to COLMAP's convention exactly: its level is found from its
scale, then ``+ 0.5 W / w_level`` (the centre of the level pixel). fuseloc's keypoints (COLMAP convention,
original image) are then compared: *agreement* is the share of reference keypoints with a fuseloc keypoint
within 1 px; *cosine* the median descriptor cosine of those nearest pairs. The last line printed is
``agreement A cosine C`` over all images.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from scipy.spatial import cKDTree

DEFAULT_IMAGES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "strecha" / "fountain-P11" / "images"
RADIUS_PX = 1.0


@dataclass
class ImageAgreement:
    """Agreement of one image.

    Attributes:
        name: the reference group (image file name).
        num_reference: reference keypoints.
        num_fuseloc: fuseloc keypoints.
        matched: reference keypoints with a fuseloc keypoint within 1 px.
        cosines: (matched,) descriptor cosines of those nearest pairs.
        matched_unshifted: the same count when the reference is only shifted by +0.5 px (hloc's reading).
        seconds: fuseloc extraction time.
    """

    name: str
    num_reference: int
    num_fuseloc: int
    matched: int
    cosines: np.ndarray
    matched_unshifted: int
    seconds: float

    @property
    def agreement(self) -> float:
        return self.matched / max(self.num_reference, 1)

    @property
    def median_cosine(self) -> float:
        return float(np.median(self.cosines)) if len(self.cosines) else float("nan")


def reference_settings(attrs: h5py.AttributeManager) -> dict[str, float]:
    """``key=value`` settings from the reference's ``source`` attribute (``scale_f=2**0.25`` is evaluated)."""
    settings: dict[str, float] = {}
    for key, value in re.findall(r"(\w+)=([0-9.]+(?:\*\*[0-9.]+)?)", str(attrs.get("source", ""))):
        base, _, power = value.partition("**")
        settings[key] = float(base) ** float(power) if power else float(value)
    return settings


def reference_to_colmap(keypoints: np.ndarray, sizes: np.ndarray, width: int, height: int, extractor) -> np.ndarray:  # noqa: ANN001
    """Official keypoints (level index x W / w_level) -> level pixel centres in COLMAP's convention."""
    from fuseloc.data.extractors.r2d2 import PATCH_SIZE

    levels = [lv for lv in extractor.levels(height, width) if lv.extract]
    level_sizes = np.array([PATCH_SIZE / lv.scale for lv in levels])
    which = np.abs(sizes[:, None] - level_sizes[None]).argmin(1)
    if np.abs(sizes - level_sizes[which]).max() > 1e-3 * level_sizes.max():
        raise ValueError("reference scales do not match the pyramid levels of these settings")
    shift = np.array([[0.5 * width / lv.width, 0.5 * height / lv.height] for lv in levels])
    return keypoints + shift[which]


def compare(name: str, ref: h5py.Group, image: np.ndarray, extractor) -> ImageAgreement:  # noqa: ANN001
    width, height = (int(v) for v in ref["image_size"][()])
    if image.shape[:2] != (height, width):
        raise ValueError(f"{name}: image is {image.shape[1]}x{image.shape[0]}, the reference says {width}x{height}")
    start = time.perf_counter()
    feats = extractor(image)
    seconds = time.perf_counter() - start
    ref_kp = np.asarray(ref["keypoints"], np.float64)
    ref_desc = np.asarray(ref["descriptors"], np.float32).T
    ref_colmap = reference_to_colmap(ref_kp, np.asarray(ref["scales"], np.float64), width, height, extractor)
    tree = cKDTree(feats.keypoints.astype(np.float64))
    dist, nearest = tree.query(ref_colmap, k=1)
    hit = dist <= RADIUS_PX
    a = ref_desc[hit] / np.linalg.norm(ref_desc[hit], axis=1, keepdims=True)
    b = feats.descriptors[nearest[hit]]
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    unshifted, _ = tree.query(ref_kp + 0.5, k=1)
    return ImageAgreement(name, len(ref_kp), len(feats.keypoints), int(hit.sum()), (a * b).sum(1),
                          int((unshifted <= RADIUS_PX).sum()), seconds)


def run_check(weights: Path, reference: Path, images: Path = DEFAULT_IMAGES, names: list[str] | None = None,
              device: str | None = "cpu") -> list[ImageAgreement]:
    """Extract the reference's images with fuseloc's R2D2 (the reference's settings) and compare."""
    from fuseloc.data.extract import read_image
    from fuseloc.data.extractors.r2d2 import R2D2

    results = []
    with h5py.File(reference, "r") as h5:
        s = reference_settings(h5.attrs)
        # the reference runs the pyramid on the original image: resize_max=0 (a no-op here for <=1024 px images)
        extractor = R2D2(weights=str(weights), max_keypoints=int(s.get("top_k", 5000)), resize_max=0,
                         scale_factor=s.get("scale_f", 2**0.25), min_scale=s.get("min_scale", 0.0),
                         max_scale=s.get("max_scale", 1.0), min_size=int(s.get("min_size", 256)),
                         max_size=int(s.get("max_size", 1024)), reliability_threshold=s.get("rel_thr", 0.7),
                         repeatability_threshold=s.get("rep_thr", 0.7), batch_size=1, device=device)
        for name in names or sorted(h5):
            if name not in h5:
                raise KeyError(f"{name!r} is not in {reference}")
            results.append(compare(name, h5[name], read_image(images / name), extractor))
    return results


def summary(results: list[ImageAgreement]) -> tuple[float, float]:
    """(overall agreement, overall median cosine) over all reference keypoints of all images."""
    matched = sum(r.matched for r in results)
    total = sum(r.num_reference for r in results)
    cosines = np.concatenate([r.cosines for r in results]) if results else np.zeros(0)
    return matched / max(total, 1), float(np.median(cosines)) if len(cosines) else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, required=True, help="r2d2_WASF_N16.pt")
    parser.add_argument("--reference", type=Path, required=True, help="official multi-scale extraction (h5)")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of the reference's images")
    parser.add_argument("--names", nargs="*", default=None, help="only these reference images")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    with h5py.File(args.reference, "r") as h5:
        for key, value in h5.attrs.items():
            print(f"reference {key}: {value}")
    results = run_check(args.weights, args.reference, args.images, args.names, args.device)
    for r in results:
        print(f"{r.name}: reference {r.num_reference} fuseloc {r.num_fuseloc} within {RADIUS_PX:g} px {r.matched} "
              f"agreement {r.agreement:.4f} cosine {r.median_cosine:.4f} (min {r.cosines.min() if len(r.cosines) else 0:.4f}) "
              f"agreement_without_scale_shift {r.matched_unshifted / max(r.num_reference, 1):.4f} "
              f"extraction {r.seconds:.1f} s")
    agreement, cosine = summary(results)
    print(f"agreement {agreement:.4f} cosine {cosine:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
