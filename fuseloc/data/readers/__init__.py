"""Dataset readers. Each turns a raw release into :class:`LocalizationData` (scene, queries, benchmark spec)."""
