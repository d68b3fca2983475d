"""JSON Schemas of rollout_py's machine-readable outputs (status, history)."""
