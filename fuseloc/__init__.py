"""fuseloc: visual localization by direct 2D-3D matching of fused local and global descriptors."""

__version__ = "0.1.0"
