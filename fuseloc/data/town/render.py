"""Rendering the town: exact per-pixel ray/plane intersection with a z-buffer and trilinear mip-mapped
texture lookups, sky and ground (COLMAP pixel convention)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from fuseloc.data.town.config import TownConfig
from fuseloc.data.town.layout import Facade, Town
from fuseloc.data.town.textures import MIP_LEVELS, Texture

#: Near clipping distance in metres.
NEAR_PLANE = 0.05


@dataclass
class RenderedView:
    """A rendered image with its exact geometry.

    Attributes:
        rgb: (H, W, 3) float32 RGB in [0, 255] before photometric effects.
        depth: (H, W) float32 z-depth in metres along the optical axis (inf for sky).
        facade: (H, W) int16 facade index per pixel, -1 for ground and sky.
    """

    rgb: np.ndarray
    depth: np.ndarray
    facade: np.ndarray


def intrinsics_matrix(config: TownConfig) -> np.ndarray:
    """PINHOLE calibration matrix in COLMAP pixel convention (principal point at the image centre)."""
    return np.array(
        [
            [config.focal, 0.0, config.image_width / 2],
            [0.0, config.focal, config.image_height / 2],
            [0.0, 0.0, 1.0],
        ]
    )


def _clip_near(points: np.ndarray, near: float) -> np.ndarray:
    """Sutherland-Hodgman clip of a convex polygon (camera frame, (N, 3)) to z >= near."""
    out = []
    n = len(points)
    for i in range(n):
        a, b = points[i], points[(i + 1) % n]
        a_in, b_in = a[2] >= near, b[2] >= near
        if a_in:
            out.append(a)
        if a_in != b_in:
            out.append(a + (near - a[2]) / (b[2] - a[2]) * (b - a))
    return np.array(out).reshape(-1, 3)


_SKY_ZENITH = np.array([105.0, 145.0, 205.0], dtype=np.float32)
_SKY_HORIZON = np.array([205.0, 218.0, 232.0], dtype=np.float32)
_GROUND = np.array([92.0, 90.0, 88.0], dtype=np.float32)
_HAZE = np.array([170.0, 175.0, 182.0], dtype=np.float32)


def render_view(
    town: Town, K: np.ndarray, R: np.ndarray, t: np.ndarray, width: int, height: int
) -> RenderedView:
    """Render the town seen by a pinhole camera (world-to-camera ``R``, ``t``; COLMAP pixel convention).

    Every pixel centre's ray is intersected analytically with the ground and with each facade plane, so
    geometry is exact and a facade partly behind the camera is handled without a degenerate homography;
    the facade's near-clipped outline only bounds the pixels to visit.
    """
    K_inv = np.linalg.inv(K)
    # Pixel centres: pixel (i, j) in array indexing has COLMAP coordinates (j + 0.5, i + 0.5).
    us = np.arange(width, dtype=np.float64) + 0.5
    vs = np.arange(height, dtype=np.float64) + 0.5
    uu, vv = np.meshgrid(us, vs)

    # Sky and ground, from the world direction of each pixel ray (camera-frame ray with z = 1).
    center = -R.T @ t
    M = R.T @ K_inv  # pixel -> world direction
    dir_z = M[2, 0] * uu + M[2, 1] * vv + M[2, 2]
    dir_norm = np.sqrt(
        (M[0, 0] * uu + M[0, 1] * vv + M[0, 2]) ** 2 + (M[1, 0] * uu + M[1, 1] * vv + M[1, 2]) ** 2 + dir_z**2
    )
    elevation = (dir_z / dir_norm).astype(np.float32)
    with np.errstate(divide="ignore"):
        ground_depth = np.where(dir_z < 0, -center[2] / np.minimum(dir_z, -1e-12), np.inf)
    depth = ground_depth.astype(np.float32)
    sky_mix = np.clip(elevation, 0.0, 1.0)[..., None] ** 0.6
    rgb = (1 - sky_mix) * _SKY_HORIZON + sky_mix * _SKY_ZENITH
    ground = np.isfinite(depth)
    haze = (1.0 - np.exp(-depth[ground] * dir_norm[ground].astype(np.float32) / 120.0))[:, None]
    rgb[ground] = (1 - haze) * _GROUND + haze * _HAZE
    rgb = rgb.astype(np.float32)
    facade_id = np.full((height, width), -1, dtype=np.int16)

    for facade in town.facades:
        corners_cam = facade.corners @ R.T + t
        normal_cam = R @ facade.normal
        if float(normal_cam @ -corners_cam[0]) <= 0:  # camera behind the facade: back faces are invisible
            continue
        clipped = _clip_near(corners_cam, NEAR_PLANE)
        if len(clipped) < 3:
            continue
        proj = clipped @ K.T
        px = proj[:, :2] / proj[:, 2:3]
        x0 = max(int(math.floor(px[:, 0].min())) - 1, 0)
        x1 = min(int(math.ceil(px[:, 0].max())) + 1, width)
        y0 = max(int(math.floor(px[:, 1].min())) - 1, 0)
        y1 = min(int(math.ceil(px[:, 1].max())) + 1, height)
        if x0 >= x1 or y0 >= y1:
            continue
        _draw_facade(
            town.textures[facade.texture],
            facade,
            K_inv,
            R,
            t,
            uu[y0:y1, x0:x1],
            vv[y0:y1, x0:x1],
            rgb[y0:y1, x0:x1],
            depth[y0:y1, x0:x1],
            facade_id[y0:y1, x0:x1],
        )
    return RenderedView(rgb, depth, facade_id)


def _draw_facade(
    texture: Texture,
    facade: Facade,
    K_inv: np.ndarray,
    R: np.ndarray,
    t: np.ndarray,
    uu: np.ndarray,
    vv: np.ndarray,
    rgb: np.ndarray,
    depth: np.ndarray,
    facade_id: np.ndarray,
) -> None:
    """Z-buffered draw of one facade into the given (views of) image buffers."""
    tw, th = texture.size
    # Plane point for texture coordinates (s, t) in texels (texel centres at +0.5, like COLMAP pixels):
    # X_cam = A @ (s, t, 1). A pixel ray r = K^-1 (u, v, 1) has r_z = 1, so with q = A^-1 r the texture
    # coordinates are (q0 / q2, q1 / q2) and the z-depth is 1 / q2 (negative: the ray hits behind the camera).
    a_s = R @ (np.asarray(facade.u) * (facade.width / tw))
    a_t = R @ np.array([0.0, 0.0, -facade.height / th])
    a_0 = R @ np.asarray(facade.top_left) + t
    G = np.linalg.inv(np.column_stack([a_s, a_t, a_0])) @ K_inv
    q0 = G[0, 0] * uu + G[0, 1] * vv + G[0, 2]
    q1 = G[1, 0] * uu + G[1, 1] * vv + G[1, 2]
    q2 = G[2, 0] * uu + G[2, 1] * vv + G[2, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_q2 = 1.0 / q2
        s = q0 * inv_q2
        tt = q1 * inv_q2
        visible = (
            (q2 > 0) & (inv_q2 >= NEAR_PLANE) & (s >= 0) & (s < tw) & (tt >= 0) & (tt < th) & (inv_q2 < depth)
        )
    if not visible.any():
        return
    s, tt, inv_q2 = s[visible], tt[visible], inv_q2[visible]
    # Texels per pixel from the Jacobian of the pixel -> texture map selects the mip level, so distant and
    # grazing facades are low-pass filtered instead of aliasing into view-dependent SIFT features.
    g20, g21 = G[2, 0], G[2, 1]
    dsdu, dsdv = (G[0, 0] - s * g20) * inv_q2, (G[0, 1] - s * g21) * inv_q2
    dtdu, dtdv = (G[1, 0] - tt * g20) * inv_q2, (G[1, 1] - tt * g21) * inv_q2
    rho2 = np.maximum(dsdu**2 + dtdu**2, dsdv**2 + dtdv**2)
    lod = np.clip(0.5 * np.log2(np.maximum(rho2, 1e-12)), 0.0, float(MIP_LEVELS))
    base = np.minimum(np.floor(lod).astype(np.int32), MIP_LEVELS - 1)
    frac = (lod - base).astype(np.float32)[:, None]
    color = np.zeros((len(s), 3), dtype=np.float32)
    for level in range(MIP_LEVELS + 1):
        weight = np.where(base == level, 1.0 - frac[:, 0], 0.0) + np.where(base + 1 == level, frac[:, 0], 0.0)
        sel = weight > 0
        if not sel.any():
            continue
        scale = 1.0 / (1 << level)
        # cv2.remap samples texel centres at integer coordinates, hence the -0.5.
        sample = _sample(texture.levels[level], s[sel] * scale - 0.5, tt[sel] * scale - 0.5)
        color[sel] += sample * weight[sel, None].astype(np.float32)
    rgb[visible] = color
    depth[visible] = inv_q2
    facade_id[visible] = facade.index


def _sample(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``image`` at cv2 pixel coordinates ``x``, ``y`` (1-D), as (N, 3) float32."""
    n = len(x)
    cols = 1024  # cv2.remap needs maps smaller than 32767 on each side
    rows = -(-n // cols)
    map_x = np.zeros(rows * cols, dtype=np.float32)
    map_y = np.zeros(rows * cols, dtype=np.float32)
    map_x[:n], map_y[:n] = x, y
    out = cv2.remap(
        image,
        map_x.reshape(rows, cols),
        map_y.reshape(rows, cols),
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT_101,
    )
    return out.reshape(rows * cols, -1)[:n].astype(np.float32)
