"""Entry point for ``python -m rollout_py``."""

from __future__ import annotations

from rollout_py.cli import main

if __name__ == "__main__":
    main()
