"""The hold-back buffer: nothing reaches the caller before a safe check has covered it.

Tokens are released only up to the last check that came out safe, minus a margin of
`hold_back` tokens. A check that comes out unsafe freezes the release point; if the guard
then acts, everything after it is discarded, so a flagged span is never released.
"""

from __future__ import annotations


class HoldBackBuffer:
    def __init__(self, hold_back: int = 0) -> None:
        if hold_back < 0:
            raise ValueError("hold_back must be >= 0")
        self.hold_back = hold_back
        self.total = 0  # tokens appended
        self.released = 0  # tokens handed out
        self.cleared = 0  # tokens covered by the last safe check
        self.closed = False

    def append(self, n: int = 1) -> None:
        if self.closed:
            raise RuntimeError("buffer is closed")
        self.total += n

    def on_check(self, covered: int, unsafe: bool) -> int:
        """Record a check over the first `covered` tokens; return how many may be released now."""
        if not unsafe:
            self.cleared = max(self.cleared, covered)
        return self._release(self.cleared - self.hold_back)

    def finish(self, final_check_safe: bool) -> int:
        """End of stream: release the remainder only if the last check was safe and covered all."""
        self.closed = True
        if final_check_safe and self.cleared >= self.total:
            return self._release(self.total)
        return 0

    def intercept(self) -> int:
        """The guard acted: withhold everything not yet released, forever."""
        self.closed = True
        return self.released

    def _release(self, upto: int) -> int:
        upto = min(upto, self.cleared, self.total)
        if upto <= self.released:
            return 0
        n = upto - self.released
        self.released = upto
        return n
