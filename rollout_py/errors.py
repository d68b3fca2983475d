"""The exception tree of rollout_py: every error the toolkit raises derives from RolloutError.

Exceptions are for impossibilities (bad input, a missing system tool, a load balancer that
does not answer); a deploy that fails and rolls back is a normal result, not an exception.

::

    RolloutError
    ├── InputError            bad input from the user; nothing was touched
    │   ├── SpecError         the rollout spec is invalid (names file, field path, expectation)
    │   ├── FlagError         a flag file is invalid, or a flag edit names a missing flag or
    │   │                     variant (names file:line:col, field path, rule)
    │   ├── PreflightError    the fleet is not in a state to deploy to; nothing was touched
    │   │   └── LockHeldError another deploy or a manual hold has the fleet (carries .holder,
    │   │                     a rollout_py.lock.Holder; the CLI exits 4)
    │   └── ControlRefusedError  an operator control was not sent: no deploy is running in the
    │                         state directory, or not the one named (the CLI exits 2)
    ├── DeployFailedError     raised by DeployResult.raise_for_status() (carries the result)
    ├── ControllerError       the controller could not run a step (disk full, runner crash)
    ├── StateError            the state directory or a journal is missing or unreadable
    │   └── JournalError      a journal write failed: the deploy stops before its next action
    ├── BalancerError         the HAProxy runtime API refused a command or could not be reached
    │   ├── BalancerUnreachable  the admin socket did not answer (the deploy stops, resumable)
    │   └── UnsafeNameError   a name that would break out of a runtime API command
    └── LabError              the local lab fleet could not be built, driven or torn down
        └── LabPrerequisiteError  root, a command or a kernel feature the lab needs is missing
"""

from __future__ import annotations

from typing import Protocol


class RolloutError(Exception):
    """Base class of every error raised by rollout_py."""


class InputError(RolloutError):
    """User input is invalid; raised before anything is touched."""


class SpecError(InputError):
    """The rollout spec is invalid: the message names the file, the field path and the rule."""


class FlagError(InputError):
    """A flag file (flagd's format) is invalid, or an edit names a flag or variant it lacks."""


class PreflightError(InputError):
    """A check before the deploy failed (inventory, sockets, servers, SSH, capacity)."""


class LockHolder(Protocol):
    """Who holds a fleet, as LockHeldError carries it: ``rollout_py.lock.Holder`` is the one
    used (described here so that this module imports nothing of rollout_py)."""

    @property
    def pid(self) -> int | None:
        """The holding deploy's process (None for a manual hold or an unknown holder)."""
        ...

    @property
    def user(self) -> str:
        """Who started the deploy or left the hold."""
        ...

    @property
    def host(self) -> str:
        """The machine it runs on."""
        ...

    @property
    def deploy_id(self) -> str | None:
        """The holding deploy's id, if it is a deploy."""
        ...

    @property
    def started(self) -> float:
        """Since when (Unix time; negative if unknown)."""
        ...

    @property
    def message(self) -> str:
        """Why, as its holder said."""
        ...

    @property
    def kind(self) -> str:
        """``"deploy"`` (a running deploy) or ``"hold"`` (a manual hold)."""
        ...

    def describe(self) -> str:
        """One line naming who holds the fleet, since when, pid, deploy id and message."""
        ...

    def to_json(self) -> str:
        """The holder as one line of JSON."""
        ...


class LockHeldError(PreflightError):
    """The fleet is locked by another deploy or a manual hold; ``holder`` says by whom.

    Defined here to sit in the tree; ``rollout_py.lock`` re-exports it, and its ``Holder``
    (pid, user, host, deploy_id, started, message, kind) is what ``holder`` holds.

    Example:
        >>> from rollout_py.lock import Holder
        >>> err = LockHeldError(Holder(None, "bob", "ops", None, 0.0, "db move", "hold"))
        >>> err.holder.kind, isinstance(err, PreflightError)
        ('hold', True)
    """

    def __init__(self, holder: LockHolder) -> None:
        hint = " (`rollout lock release` removes it)" if holder.kind == "hold" else ""
        super().__init__(f"fleet is locked: {holder.describe()}{hint}")
        self.holder = holder


class ControlRefusedError(InputError):
    """An operator control (``rollout promote|abort|pause|continue``) was not sent: no deploy
    is running in ``state_dir``, the one named (``deploy_id``) is not, or several are and none
    was named. Nothing was written; ``running`` holds the ids of the deploys running there.

    Example:
        >>> err = ControlRefusedError("no deploy is running in .rollout", state_dir=".rollout")
        >>> isinstance(err, InputError), err.running
        (True, ())
    """

    def __init__(self, message: str, *, state_dir: str, deploy_id: str | None = None,
                 running: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.state_dir, self.deploy_id, self.running = state_dir, deploy_id, running


class DeployFailedError(RolloutError):
    """A deploy did not succeed; ``result`` holds its DeployResult."""

    def __init__(self, result: object) -> None:
        status = getattr(result, "status", "failed")
        cause = getattr(result, "cause", None)
        super().__init__(f"deploy {status}: {cause or 'see the result'}")
        self.result = result


class ControllerError(RolloutError):
    """The controller itself could not run a step (its disk is full, the runner crashed)."""


class StateError(RolloutError):
    """The state directory, or a deploy's journal in it, is missing or unreadable."""


class JournalError(StateError):
    """Writing the journal failed; the deploy stops before its next action."""


class BalancerError(RolloutError):
    """The HAProxy runtime API could not be reached or answered with an error."""


class BalancerUnreachable(BalancerError):
    """An LB's admin socket could not be reached (gone, refused, timed out)."""


class UnsafeNameError(BalancerError, InputError):
    """A backend or server name breaks HAProxy's naming rules (and could inject a command)."""


class LabError(RolloutError):
    """The local lab fleet could not be built, driven or torn down."""


class LabPrerequisiteError(LabError):
    """Something the lab needs (root, haproxy, sshd, ip) is missing; nothing was created."""
