"""Incremental tokenisation and detokenisation of streamed text.

Byte-level BPE never merges across a whitespace-to-word boundary, so text is committed up to
the last such boundary and the unfinished word waits for the next chunk. Any chunking of the
same text yields the same tokens as encoding it whole.
"""

from __future__ import annotations

import codecs
import re

from transformers.tokenization_utils_base import PreTrainedTokenizerBase

_BOUNDARY = re.compile(r"\s+\S")


class IncrementalTokenizer:
    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.pending = ""  # text received but not yet tokenised
        self.text = ""  # text tokenised so far
        self.token_ends: list[int] = []  # end offset in `text` of each committed token

    def feed(self, chunk: str | bytes) -> list[int]:
        """Add a chunk; return the tokens that are now final."""
        if isinstance(chunk, bytes):
            chunk = self._decoder.decode(chunk)
        self.pending += chunk
        cut = self._last_boundary(self.pending)
        if cut <= 0:
            return []
        return self._commit(cut)

    def flush(self) -> list[int]:
        """End of stream: tokenise whatever is left."""
        self.pending += self._decoder.decode(b"", final=True)
        return self._commit(len(self.pending)) if self.pending else []

    @staticmethod
    def _last_boundary(text: str) -> int:
        last = -1
        for match in _BOUNDARY.finditer(text):
            last = match.start()
        return last

    def _commit(self, cut: int) -> list[int]:
        segment, self.pending = self.pending[:cut], self.pending[cut:]
        enc = self.tokenizer(segment, add_special_tokens=False, return_offsets_mapping=True)
        base = len(self.text)
        ids = [int(i) for i in enc["input_ids"]]
        ends = [base + int(end) for _, end in enc["offset_mapping"]]
        if ends:
            ends[-1] = base + len(segment)  # trailing whitespace belongs to the last token
        self.text += segment
        self.token_ends.extend(ends)
        return ids

    def text_upto(self, n_tokens: int) -> str:
        """The exact input text covered by the first `n_tokens` tokens."""
        if n_tokens <= 0:
            return ""
        return self.text[: self.token_ends[min(n_tokens, len(self.token_ends)) - 1]]


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
