"""The project's error hierarchy.

Every error a user can cause derives from :class:`CarilError`; the command line catches it and prints its
message as one line with a non-zero exit, so messages must say what is wrong and how to fix it.
"""

from __future__ import annotations


class CarilError(Exception):
    """Base class of all errors a user can cause (bad input, missing file or dependency, no server)."""


class InvalidControlError(CarilError, ValueError):
    """A control outside its range (steer [-1, 1], throttle and brake [0, 1]) or not finite."""


class UnknownNameError(CarilError, KeyError):
    """An unknown route, weather or preset name; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DependencyNotInstalled(CarilError, ImportError):
    """An optional dependency is missing; the message names the pip extra that provides it."""


def unknown_name(kind: str, name: str, valid: list[str] | tuple[str, ...], hint: str = "") -> UnknownNameError:
    """Build the error for an unknown ``kind`` name, listing every valid name (and an optional hint)."""
    extra = f" {hint}" if hint else ""
    return UnknownNameError(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(valid)}.{extra}")


def permission_denied(path: object) -> str:
    """The one message for a file this process may not read (not "corrupt": the bytes may be fine)."""
    return f"{path} cannot be read: permission denied (check its owner and mode, e.g. ls -l {path})"


class UsageError(CarilError, ValueError):
    """A command-line value that is well-formed but not acceptable (e.g. ``--trials 0``)."""


class SimulatorConnectionLost(CarilError):
    """The simulator stopped answering in the middle of an episode (crash, hang or lost sensor data).

    ``reason`` is a short machine-readable cause (``tick_timeout``, ``server_error``, ``sensor_timeout``,
    ``frame_skipped``) recorded in evaluation results; campaigns fail the episode and reconnect.
    """

    def __init__(self, message: str, reason: str = "server_error") -> None:
        super().__init__(message)
        self.reason = reason
