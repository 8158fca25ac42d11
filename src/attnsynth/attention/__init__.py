"""Attention capture and map geometry shared by ``sis`` and ``t2i`` (imports neither)."""
