"""A test double of one HAProxy admin socket (``rollout_py.testing`` exports it)."""

from __future__ import annotations

from collections.abc import Mapping


class FakeTransport:
    """An HAProxy runtime API socket that answers from ``answers`` ("" by default, what a
    state change answers) and records every command in ``sent``.

    Example:
        >>> t = FakeTransport({"show cli level": "admin"})
        >>> t.send("show cli level"), t.sent
        ('admin', ['show cli level'])
    """

    url = "fake://"

    def __init__(self, answers: Mapping[str, str] | None = None) -> None:
        self.answers = dict(answers or {})
        self.sent: list[str] = []

    def send(self, command: str) -> str:
        self.sent.append(command)
        return self.answers.get(command, "")

    def close(self) -> None:
        pass
