"""attnsynth — controllable image synthesis through cross-attention.

Two methods on one core: CA²-SIS semantic image synthesis (:mod:`attnsynth.sis`) and AI-T2I
attention-guided Stable Diffusion (:mod:`attnsynth.t2i`), with procedural toy worlds whose ground
truth is known (:mod:`attnsynth.toyworld`) for tests, demos and benchmarks.
"""

__version__ = "0.1.0"
