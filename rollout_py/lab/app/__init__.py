"""Files of the lab's sample app (installed on lab hosts, not imported by rollout_py)."""
