"""Lightning callbacks (validation by localization)."""
