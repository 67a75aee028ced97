"""Incremental tokenisation and detokenisation of streamed text.

Byte-level BPE never merges across a whitespace-to-word boundary, so text is committed up to
the last such boundary and the unfinished word waits for the next chunk. A run without such a
boundary (a long word, a long stretch of spaces) is committed at fixed points, every
`RUN_CAP` characters from the run's start, so the pending text stays bounded and the cut
points do not depend on the chunking either. Any chunking of the same text yields the same
tokens.

The tokenizer reads the normalised text (`guardrail.model.normalize`); offsets map back to
the caller's own text, which is what `text_upto` returns, byte for byte.
"""

from __future__ import annotations

import codecs
import re
from typing import Any

from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from guardrail.model.normalize import StreamNormalizer
from guardrail.model.prompts import ensure_encodable

_BOUNDARY = re.compile(r"\s+\S")
_RUN = re.compile(r"\S+|\s+")
RUN_CAP = 256  # longest run of characters without a token boundary that waits uncommitted


class IncrementalTokenizer:
    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._normalizer = StreamNormalizer()
        self.pending = ""  # normalised text received but not yet tokenised
        self._origin = [0]  # offset in the caller's text of each pending character, plus the end
        self._committed = 0  # normalised characters tokenised so far
        self._run_start: int | None = None  # where the run cut at the last commit started
        self.token_ends: list[int] = []  # end offset, in the caller's text, of each committed token

    @property
    def raw(self) -> str:
        """Everything received, exactly as the caller sent it."""
        return self._normalizer.raw

    @property
    def text(self) -> str:
        """The caller's text covered by the committed tokens."""
        return self.raw[: self._origin[0]]

    def feed(self, chunk: str | bytes) -> list[int]:
        """Add a chunk; return the tokens that are now final. A failure changes nothing."""
        with self._unchanged_on_error():
            if isinstance(chunk, bytes):
                chunk = self._decoder.decode(chunk)
            ensure_encodable(chunk)
            self._take(*self._normalizer.feed(chunk))
            return self._commit(self._commit_point())

    def flush(self) -> list[int]:
        """End of stream: tokenise whatever is left. A failure changes nothing."""
        with self._unchanged_on_error():
            self._take(*self._normalizer.feed(self._decoder.decode(b"", final=True), final=True))
            return self._commit(len(self.pending))

    def _take(self, text: str, origin: list[int]) -> None:
        if text:
            self.pending += text
            self._origin = self._origin[:-1] + origin
        else:
            self._origin[-1] = origin[-1]

    def _commit_point(self) -> int:
        """The last boundary, or the last fixed cut inside a long run, whichever is later."""
        last = -1
        for match in _BOUNDARY.finditer(self.pending):
            last = match.start()
        cuts = self._cuts(len(self.pending))
        return max(last, cuts[-1] if cuts else -1)

    def _cuts(self, end: int) -> list[int]:
        """Fixed cut points (offsets in `pending`, strictly inside a run) before `end`."""
        cuts = []
        for match in _RUN.finditer(self.pending, 0, end):
            start = match.start() + self._committed
            if match.start() == 0 and self._run_start is not None:
                start = self._run_start  # the run was cut at the last commit: count from its start
            first = (match.start() + self._committed - start) // RUN_CAP + 1
            for point in range(start + first * RUN_CAP, match.end() + self._committed, RUN_CAP):
                cuts.append(point - self._committed)
        return cuts

    def _commit(self, cut: int) -> list[int]:
        if cut <= 0:
            return []
        pieces = [*self._cuts(cut), cut]
        ids: list[int] = []
        ends: list[int] = []
        last = 0
        for point in pieces:  # fixed cuts are tokenised apart, as every chunking does
            segment = self.pending[last:point]
            enc = self.tokenizer(segment, add_special_tokens=False, return_offsets_mapping=True)
            piece_ends = [last + int(end) for _, end in enc["offset_mapping"]]
            if piece_ends:
                piece_ends[-1] = point  # trailing whitespace belongs to the last token
            ids += [int(i) for i in enc["input_ids"]]
            ends += piece_ends
            last = point
        run = None
        if cut < len(self.pending) and self.pending[cut - 1].isspace() == self.pending[cut].isspace():
            # cut inside a run (a fixed cut): the next commit counts from the run's start
            runs = [m.start() for m in _RUN.finditer(self.pending, 0, cut)]
            continued = runs[-1] == 0 and self._run_start is not None
            run = self._run_start if continued else self._committed + runs[-1]
        self.token_ends.extend(self._origin[e] for e in ends)
        self.pending = self.pending[cut:]
        self._origin = self._origin[cut:]
        self._committed += cut
        self._run_start = run
        return ids

    def _unchanged_on_error(self) -> Any:
        return _Rollback(self)

    def snapshot(self) -> tuple[Any, ...]:
        """Everything `restore` needs to undo what later feeds did."""
        return (self._decoder.getstate(), self._normalizer.raw, self._normalizer.done, self.pending,
                list(self._origin), self._committed, self._run_start, len(self.token_ends))

    def restore(self, saved: tuple[Any, ...]) -> None:
        decoder, raw, done, self.pending, origin, self._committed, self._run_start, n_ends = saved
        self._origin = list(origin)
        self._decoder.setstate(decoder)
        self._normalizer.raw, self._normalizer.done = raw, done
        del self.token_ends[n_ends:]

    def text_upto(self, n_tokens: int) -> str:
        """The caller's exact text covered by the first `n_tokens` tokens."""
        return self.raw[: self.end_of(n_tokens)]

    def end_of(self, n_tokens: int) -> int:
        """Where, in the caller's text, the first `n_tokens` tokens end."""
        if n_tokens <= 0:
            return 0
        return self.token_ends[min(n_tokens, len(self.token_ends)) - 1]


class _Rollback:
    """Restores a tokenizer's state when the block fails (bad input, tokenizer error)."""

    def __init__(self, stream: IncrementalTokenizer) -> None:
        self.stream = stream

    def __enter__(self) -> None:
        self.saved = self.stream.snapshot()

    def __exit__(self, kind: object, *_: object) -> None:
        if kind is not None:
            self.stream.restore(self.saved)


class IncrementalDetokenizer:
    """Decodes generated ids to text without splitting multi-byte characters."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = ""

    def add(self, ids: list[int], *, final: bool = False) -> str:
        self.ids.extend(ids)
        text = str(self.tokenizer.decode(self.ids, skip_special_tokens=True))
        if not final and text.endswith("\ufffd"):
            text = text.rstrip("\ufffd")
        if not text.startswith(self.emitted):
            # rare re-segmentation at a boundary: emit only what extends the stable prefix
            common = 0
            while common < min(len(text), len(self.emitted)) and text[common] == self.emitted[common]:
                common += 1
            text = self.emitted + text[common:] if common == len(self.emitted) else self.emitted
        new = text[len(self.emitted) :]
        self.emitted = text
        return new
