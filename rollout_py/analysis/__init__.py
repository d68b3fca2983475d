"""Canary analysis, pure: HAProxy's per-server counters in, verdicts out.

``counters`` turns two samples of ``show stat`` into a window's deltas (or a reset),
``stats`` holds the two-proportion test, ``gates`` judges each gate of the spec on a window,
``prometheus`` reads a PromQL gate's number over HTTP, ``judge`` gives a window its verdict and
``run`` decides an analysis step from its windows. Sampling and timing are the engine's.
"""
