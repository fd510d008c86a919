"""Errors a user can act on. The CLI prints their message as one line and exits with code 2."""


class BenchError(Exception):
    """Base class: the message names the problem and the fix."""


class DeviceUnavailable(BenchError):
    """The requested device is absent, or the runtime would silently run somewhere else."""


class InvalidOption(BenchError):
    """An option value out of range or inconsistent with the model."""
