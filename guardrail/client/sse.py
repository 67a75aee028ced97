"""A minimal server-sent events parser, fed line by line (sync and async clients share it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SSEMessage:
    event: str
    data: str


class SSEParser:
    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> SSEMessage | None:
        """One line without its newline; returns a message when a blank line ends one."""
        line = line.rstrip("\r")
        if not line:
            if not self._data and not self._event:
                return None
            message = SSEMessage(self._event or "message", "\n".join(self._data))
            self._event, self._data = "", []
            return message
        if line.startswith(":"):
            return None  # comment (keep-alive ping)
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
        return None

    def flush(self) -> SSEMessage | None:
        return self.feed("")
