"""The town's photometry: exposure jitter for database and day images, night degradation (gamma, street
light colour and pools, mottled shadows, blur, camera shake, noise)."""

from __future__ import annotations

import math

import cv2
import numpy as np

from fuseloc.data.town.config import TownConfig
from fuseloc.data.town.views import View


def _motion_kernel(length: float, angle: float) -> np.ndarray:
    """Normalised linear motion-blur kernel: a segment of ``length`` px at ``angle`` rad through the centre."""
    half = 0.5 * length
    size = 2 * int(math.ceil(half)) + 1
    kernel = np.zeros((size + 1, size + 1), dtype=np.float64)  # one spare row/column for the splats
    centre = size // 2
    for s in np.linspace(-half, half, 8 * int(math.ceil(length)) + 1):
        x, y = centre + s * math.cos(angle), centre + s * math.sin(angle)
        x0, y0 = int(math.floor(x)), int(math.floor(y))
        fx, fy = x - x0, y - y0
        kernel[y0, x0] += (1 - fx) * (1 - fy)
        kernel[y0, x0 + 1] += fx * (1 - fy)
        kernel[y0 + 1, x0] += (1 - fx) * fy
        kernel[y0 + 1, x0 + 1] += fx * fy
    kernel = kernel[:size, :size]
    return (kernel / kernel.sum()).astype(np.float32)


def apply_photometry(rgb: np.ndarray, view: View, config: TownConfig) -> np.ndarray:
    """Exposure (database, day) or night degradation; seeded per view. Returns BGR uint8 for cv2.imwrite."""
    stream = {"db": 3, "day": 4, "night": 5}[view.condition]
    seed = config.seed if view.condition == "db" else config.effective_query_seed
    rng = np.random.default_rng([seed, stream, view.index])
    image = rgb / np.float32(255.0)
    if view.condition == "night":
        gamma = rng.uniform(*config.night_gamma)
        gain = rng.uniform(*config.night_brightness)
        # Sodium-orange or cold-LED street lighting.
        cast = np.array([1.15, 0.85, 0.55] if rng.random() < 0.5 else [0.65, 0.85, 1.2], dtype=np.float32)
        h, w = image.shape[:2]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        # Uneven street lighting: dim ambient light plus a few pools of lamp light, and lens vignetting.
        light = np.full((h, w), 0.35, dtype=np.float32)
        for _ in range(3):
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            radius = rng.uniform(0.15, 0.4) * w
            light += np.float32(rng.uniform(0.3, 0.8)) * np.exp(
                -((xx - cx) ** 2 + (yy - cy) ** 2) / np.float32(2 * radius**2)
            )
        r2 = ((xx - w / 2) ** 2 + (yy - h / 2) ** 2) / np.float32((w / 2) ** 2 + (h / 2) ** 2)
        light *= 1.0 - 0.4 * r2
        # Mottled light and shadow (foliage, lamp glare) at the scale of SIFT patches: unlike the smooth
        # terms above it changes local gradients, hence descriptors, as real night lighting does.
        mottle = cv2.GaussianBlur(
            rng.standard_normal((h, w), dtype=np.float32), (0, 0), config.night_mottle[1]
        )
        mottle *= np.float32(config.night_mottle[0] / max(float(mottle.std()), 1e-6))
        light *= np.exp(mottle)
        image = np.power(image, np.float32(gamma)) * np.float32(gain) * cast * light[..., None] * 255.0
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(*config.night_blur_sigma))
        # Camera shake during the long exposure: a short linear motion blur in a random direction.
        kernel = _motion_kernel(rng.uniform(*config.night_shake_px), rng.uniform(0.0, math.pi))
        image = cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT_101)
        noise_std = rng.uniform(*config.night_noise)
        # Shot noise grows with brightness, read noise is constant.
        image = image + rng.standard_normal(image.shape, dtype=np.float32) * np.sqrt(
            np.float32(noise_std**2) + 0.3 * np.maximum(image, 0.0)
        )
    else:
        gain = 1.0 + rng.uniform(-1.0, 1.0) * config.exposure_jitter
        gamma = 1.0 + rng.uniform(-1.0, 1.0) * 0.5 * config.exposure_jitter
        image = np.power(image, np.float32(gamma)) * np.float32(gain) * 255.0
    out = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(out[:, :, ::-1])
