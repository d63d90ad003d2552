"""Cache keys of evaluation: keys of what a fused map and a prediction log are computed from, made by the
recipe of :mod:`fuseloc.cachekeys`."""

from __future__ import annotations

from fuseloc.cachekeys import key_of
from fuseloc.data.prepare import PreparedFeatures
from fuseloc.data.scene import QuerySet, Scene
from fuseloc.models.fusion import Fusion, fusion_class_path, fusion_init_args


def fusion_key(fusion: Fusion) -> str:
    """Key of a fitted fusion: its class, constructor arguments and state (each tensor by content)."""
    return key_of({"class": fusion_class_path(fusion), "init": fusion_init_args(fusion),
                   "state": {k: v.detach().cpu().numpy() for k, v in fusion.state_dict().items()}})


def scene_key(scene: Scene) -> str:
    """Key of everything a map is built from: images, poses, points and observations (not just their counts)."""
    return key_of({"images": scene.image_names,
                   "arrays": [scene.R_cam_from_world, scene.t_cam_from_world, scene.points_xyz, scene.obs_image,
                              scene.obs_point, scene.obs_xy, scene.obs_keypoint]})


def query_key(queries: QuerySet) -> str:
    """Key of the query names and intrinsics: corrected intrinsics must not reuse old predictions."""
    return key_of([queries.names, [c.to_tokens() for c in queries.cameras]])


def query_sources(queries: QuerySet, features: PreparedFeatures) -> dict[str, str]:
    """Per query, the key of what its prediction is computed from beyond the run's shared inputs: the stamps its
    local and global features record of the image (a corrected image with the same name gets another key)."""
    return {name: key_of(features.cache.sources(name)) for name in queries.names}


def map_inputs(scene: Scene, features: PreparedFeatures) -> dict:
    """What any map of ``scene`` is built from (features and scene content): the shared part of map cache keys."""
    return {"local": features.local_tag, "global": features.global_tag, "points": scene.num_points,
            "obs": len(scene.obs_point), "images": key_of(scene.image_names), "scene": scene_key(scene),
            # the database images' content: a replaced image changes its features, so the map
            "content": features.database_key}
