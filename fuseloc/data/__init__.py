"""Dataset readers, the common scene model, feature extraction and caches, map triangulation."""
