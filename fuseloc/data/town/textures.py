"""The town's facade textures: bundled photos (scikit-image, scikit-learn; no download), cropped, tinted
and resized to a facade, with a box-filtered mip pyramid."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

#: Texture mip levels below the full resolution (texture sizes are multiples of 2**MIP_LEVELS texels).
MIP_LEVELS = 4


@dataclass(frozen=True)
class TextureSource:
    name: str
    loader: str  # "skimage:<function>", "skimage:stereo_motorcycle" (left view) or "sklearn:<index>"
    crop: tuple[float, float, float, float]  # (y0, y1, x0, x1) as fractions of the source image
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)  # RGB multiplier for grey sources
    rich: bool = False  # many SIFT keypoints at street distances: preferred for the repeated facades


_FULL = (0.0, 1.0, 0.0, 1.0)

#: Side-facade textures (aspect ratio 0.74 to 1.5). Crops of one source never overlap, so no content is
#: shared between textures except where the layout repeats a texture on purpose. Sources with few SIFT
#: features (moon, clock, retina, colorwheel...) are left out; so are sources that need a download.
#: ``rich`` marks the textures with the most SIFT keypoints (about 300 to 1300 on a facade at half
#: resolution, against 70 to 260 for the others): the repeated facades are drawn from them first, so that
#: most keypoints of a view are ambiguous whatever the seed.
SIDE_TEXTURES: tuple[TextureSource, ...] = (
    TextureSource("astronaut", "skimage:astronaut", _FULL, rich=True),
    TextureSource("china_left", "sklearn:0", (0.0, 1.0, 0.0, 0.5), rich=True),
    TextureSource("china_right", "sklearn:0", (0.0, 1.0, 0.5, 1.0), rich=True),
    TextureSource("motorcycle_left", "skimage:stereo_motorcycle", (0.0, 1.0, 0.0, 0.5), rich=True),
    TextureSource("motorcycle_right", "skimage:stereo_motorcycle", (0.0, 1.0, 0.5, 1.0), rich=True),
    TextureSource("brick", "skimage:brick", _FULL, (1.0, 0.78, 0.62), rich=True),
    TextureSource("coins", "skimage:coins", _FULL, (1.0, 0.9, 0.7), rich=True),
    TextureSource("grass", "skimage:grass", _FULL, (0.75, 1.0, 0.7), rich=True),
    TextureSource("chelsea", "skimage:chelsea", _FULL),
    TextureSource("coffee", "skimage:coffee", _FULL),
    TextureSource("rocket", "skimage:rocket", _FULL),
    TextureSource("flower", "sklearn:1", _FULL),
    TextureSource("hubble_bottom_left", "skimage:hubble_deep_field", (0.5, 1.0, 0.0, 0.5)),
    TextureSource("hubble_bottom_right", "skimage:hubble_deep_field", (0.5, 1.0, 0.5, 1.0)),
    TextureSource("camera", "skimage:camera", _FULL, (0.95, 0.95, 1.0)),
)

#: End-wall textures (aspect ratio >= 2, they span the street width). Gravel is left out: its dense
#: noise-like keypoints would crowd out everything else in a view.
END_TEXTURES: tuple[TextureSource, ...] = (
    TextureSource("hubble_top", "skimage:hubble_deep_field", (0.0, 0.5, 0.0, 1.0)),
    TextureSource("ihc_top", "skimage:immunohistochemistry", (0.0, 0.5, 0.0, 1.0)),
    TextureSource("ihc_bottom", "skimage:immunohistochemistry", (0.5, 1.0, 0.0, 1.0)),
    TextureSource("page", "skimage:page", _FULL, (1.0, 0.96, 0.85)),
    TextureSource("text", "skimage:text", _FULL, (0.85, 0.9, 1.0)),
)


def _load_source(loader: str) -> np.ndarray:
    """Load a bundled source image as RGB uint8 (no network access)."""
    kind, _, name = loader.partition(":")
    if kind == "skimage":
        from skimage import data

        image = data.stereo_motorcycle()[0] if name == "stereo_motorcycle" else getattr(data, name)()
    elif kind == "sklearn":
        from sklearn.datasets import load_sample_images

        image = load_sample_images().images[int(name)]
    else:
        raise ValueError(f"unknown texture loader {loader!r}")
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"texture source {loader} is {image.dtype}, expected uint8")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def _texture_size(width_m: float, aspect: float, texels_per_metre: float) -> tuple[int, int]:
    """Texture (width, height) in texels, both multiples of 2**MIP_LEVELS so mip levels halve exactly."""
    unit = 2**MIP_LEVELS
    tw = max(unit, int(round(width_m * texels_per_metre / unit)) * unit)
    th = max(unit, int(round(tw / aspect / unit)) * unit)
    return tw, th


@dataclass
class Texture:
    """A facade texture with its mip pyramid.

    Attributes:
        name: texture name (see ``SIDE_TEXTURES``/``END_TEXTURES``).
        levels: RGB uint8 images; ``levels[k]`` has ``2**-k`` times the resolution of ``levels[0]``.
    """

    name: str
    levels: list[np.ndarray]

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the full-resolution texture in texels."""
        return self.levels[0].shape[1], self.levels[0].shape[0]


def _make_texture(
    source: TextureSource, image: np.ndarray, width_m: float, texels_per_metre: float
) -> Texture:
    h, w = image.shape[:2]
    y0, y1, x0, x1 = source.crop
    crop = image[int(round(y0 * h)) : int(round(y1 * h)), int(round(x0 * w)) : int(round(x1 * w))]
    tw, th = _texture_size(width_m, crop.shape[1] / crop.shape[0], texels_per_metre)
    shrink = tw < crop.shape[1]
    resized = cv2.resize(crop, (tw, th), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    if source.tint != (1.0, 1.0, 1.0):
        resized = (
            np.clip(resized.astype(np.float32) * np.float32(source.tint), 0, 255).round().astype(np.uint8)
        )
    # Box-filtered halving keeps texel centres aligned across levels (level k texel i covers level-0 texels
    # [2**k i, 2**k (i+1))), which the renderer relies on for exact texture coordinates.
    levels = [np.ascontiguousarray(resized)]
    for _ in range(MIP_LEVELS):
        prev = levels[-1]
        levels.append(
            cv2.resize(prev, (prev.shape[1] // 2, prev.shape[0] // 2), interpolation=cv2.INTER_AREA)
        )
    return Texture(source.name, levels)



def load_textures(widths: dict[str, float], texels_per_metre: float) -> dict[str, Texture]:
    """The named textures, each sized for a facade ``widths[name]`` metres wide (sources loaded once)."""
    sources = {s.name: s for s in (*SIDE_TEXTURES, *END_TEXTURES)}
    images: dict[str, np.ndarray] = {}
    textures: dict[str, Texture] = {}
    for name in sorted(widths):
        source = sources[name]
        if source.loader not in images:
            images[source.loader] = _load_source(source.loader)
        textures[name] = _make_texture(source, images[source.loader], widths[name], texels_per_metre)
    return textures
