"""Loaders for real dataset layouts (CelebAMask-HQ/SEAN, ADE20K, generic folders) and toy data."""
