"""Pose-error metrics, recall tables and submission files. No Lightning imports here."""
