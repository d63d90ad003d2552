"""Cache keys of evaluation: fingerprints of what a fused map and a prediction log are computed from."""

from __future__ import annotations

import hashlib
import json

import numpy as np

from fuseloc.data.prepare import PreparedFeatures
from fuseloc.data.scene import QuerySet, Scene
from fuseloc.io import config_hash
from fuseloc.models.fusion import Fusion, fusion_class_path, fusion_init_args


def fusion_fingerprint(fusion: Fusion) -> str:
    digest = hashlib.sha1(fusion_class_path(fusion).encode())
    digest.update(json.dumps(fusion_init_args(fusion), sort_keys=True, default=str).encode())
    for k, v in sorted(fusion.state_dict().items()):
        digest.update(k.encode())
        digest.update(v.detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:10]


def scene_fingerprint(scene: Scene) -> str:
    """Hash of everything a map is built from: images, poses, points and observations (not just their counts)."""
    digest = hashlib.sha1(json.dumps(scene.image_names).encode())
    for array in (scene.R_cam_from_world, scene.t_cam_from_world, scene.points_xyz, scene.obs_image, scene.obs_point,
                  scene.obs_xy, scene.obs_keypoint):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:10]


def query_fingerprint(queries: QuerySet) -> str:
    """Hash of the query names and intrinsics: corrected intrinsics must not reuse old predictions."""
    return config_hash([queries.names, [c.to_tokens() for c in queries.cameras]])


def map_inputs(scene: Scene, features: PreparedFeatures) -> dict:
    """What any map of ``scene`` is built from (features and scene content): the shared part of map cache keys."""
    return {"local": features.local_tag, "global": features.global_tag, "points": scene.num_points,
            "obs": len(scene.obs_point), "images": config_hash(scene.image_names), "scene": scene_fingerprint(scene)}
