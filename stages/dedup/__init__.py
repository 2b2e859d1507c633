"""Duplicates and leakage: image fingerprints, neighbour search, groups and quality issues."""
