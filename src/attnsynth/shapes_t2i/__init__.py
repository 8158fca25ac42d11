"""The shapes-world text-to-image model: architecture and loading (``model``), its trainer (``train``),
token grounding (``grounding``), the guidance benchmark (``bench``) and the demo section (``demo_page``).

The worlds themselves (rendering, captions, the oracle) stay in :mod:`attnsynth.toyworld`.
"""


def load_t2i_pipeline(path=None, *, device=None, dtype=None):
    """The shipped shapes-world ``StableDiffusionPipeline`` (imported lazily: the package loads without diffusers)."""
    from attnsynth.shapes_t2i.model import load_t2i_pipeline as _load

    return _load(path, device=device, dtype=dtype)
