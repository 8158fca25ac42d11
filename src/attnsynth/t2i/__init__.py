"""AI-T2I: attention-guided Stable Diffusion pipelines (and the A&E, Divide & Bind, layout baselines)."""
