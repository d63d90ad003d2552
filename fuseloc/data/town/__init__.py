"""A deterministic synthetic town: the project's embedded demo scene, generated on first use.

The town is a few parallel streets, each a closed canyon lined with planar rectangular facades that carry
real photo textures (shipped offline with scikit-image and scikit-learn). A handful of textures is
deliberately reused at several places far apart, each time between different neighbours, so that a query
keypoint's nearest database descriptor is often a copy at the wrong place: local-only direct 2D-3D matching
is ambiguous, while the set of facades seen together (global image context) tells the places apart.

The scene is rendered with exact pinhole geometry (per-pixel ray/plane intersection with a z-buffer,
trilinear mip-mapped texture lookups) and written in the generic dataset layout
(:mod:`fuseloc.data.readers.generic`)::

    root/
      images/db/street<j>_<k>.png         database images
      images/query/{day,night}/<k>.png     query images
      sparse/{cameras,images,points3D}.txt COLMAP text model of the database images, no points
      queries_with_intrinsics.txt          name PINHOLE W H fx fy cx cy
      gt_poses.txt                         name qw qx qy qz tx ty tz (world-to-camera)
      query_conditions.txt                 name day|night
      scene.json                           facade geometry and texture names (for debugging and tests)
      .complete                            written last: the config as JSON

Conventions: metres; world z up, ground plane z = 0, streets run along world x; camera frame x right,
y down, z forward; poses world-to-camera (``x_cam = R @ x_world + t``); COLMAP pixel coordinates (the centre
of the top-left pixel is (0.5, 0.5)).

Modules, in the order they build on each other: :mod:`~.textures` (photo textures), :mod:`~.config`
(:class:`TownConfig`, cache key), :mod:`~.layout` (streets and facades), :mod:`~.views` (cameras),
:mod:`~.render` (geometry and pixels), :mod:`~.photometry` (day and night looks), :mod:`~.write` (scene
files) and :mod:`~.generate` (the whole run, with completion marks).
"""

from fuseloc.data.town.config import GENERATOR_VERSION, TownConfig, default_scene_dir, scene_hash
from fuseloc.data.town.generate import generate_town, is_complete

__all__ = ["GENERATOR_VERSION", "TownConfig", "default_scene_dir", "generate_town", "is_complete", "scene_hash"]
