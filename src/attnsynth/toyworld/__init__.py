"""Procedural toy worlds with exact ground truth: ``faces`` (SIS) and ``shapes`` (T2I)."""


def load_t2i_pipeline(path=None, *, device=None, dtype=None):
    """The shipped shapes-world ``StableDiffusionPipeline`` (see :mod:`attnsynth.toyworld.t2i_model`).

    Imported lazily so the toy worlds load without diffusers.
    """
    from attnsynth.toyworld.t2i_model import load_t2i_pipeline as _load

    return _load(path, device=device, dtype=dtype)
