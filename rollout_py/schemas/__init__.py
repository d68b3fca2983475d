"""JSON Schemas of rollout_py's machine-readable outputs (status, history) and of its input,
rollout.yml."""
