"""Evaluation: ``keys`` (cache keys), ``predictions`` (per-query log), ``metrics`` (scoring),
``submission`` (a method's files, merged over parts), ``report`` (table and recall curves), ``runner`` (the loop)."""
