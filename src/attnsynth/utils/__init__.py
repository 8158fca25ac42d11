"""Small shared helpers (atomic file writes, image conversion)."""
