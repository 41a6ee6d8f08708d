"""Exceptions of polycnn. Bad input raises ``ValueError``/``TypeError`` naming the argument and
shapes; a backend that cannot run raises :class:`BackendUnavailable` saying why and how to fix it."""


class BackendUnavailable(RuntimeError):
    """The backend asked for is unknown or cannot run here; the message says why and the fix."""
