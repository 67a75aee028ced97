"""Errors the client raises; request mistakes are ValueErrors, as in the embedded Guard."""

from __future__ import annotations


class GuardrailError(Exception):
    """Base class of every client error."""


class GuardrailRequestError(GuardrailError, ValueError):
    """The sidecar rejected the request (4xx); the message is the server's explanation."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.code = code
        self.server_message = message


class GuardrailAuthError(GuardrailRequestError):
    """401: missing or wrong API key."""


class SidecarUnavailableError(GuardrailError):
    """The sidecar could not be reached or kept failing after the retries."""


class SessionClosedRemoteError(GuardrailRequestError, RuntimeError):
    """409: a chunk after the session was closed or intercepted.

    A `RuntimeError` as well, like the embedded session's `SessionClosedError`, so one
    `except RuntimeError` handles both guards.
    """
