"""Procedural toy worlds with exact ground truth: ``faces`` (SIS) and ``shapes`` (T2I), and their oracles.

The shapes-world text-to-image model lives in :mod:`attnsynth.shapes_t2i`.
"""
