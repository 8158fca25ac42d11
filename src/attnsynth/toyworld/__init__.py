"""Procedural toy worlds with exact ground truth: ``faces`` (SIS) and ``shapes`` (T2I)."""
