"""What the classifier reads: one normalisation, used by every path that tokenises text.

A reader does not see invisible characters, exotic spaces look like spaces, and a letter
under a heap of combining marks still reads as the letter. The classifier must read the text
the same way, or those characters hide content from it. The rules, applied per cluster (a
base character and the combining marks that follow it):

- dropped: format characters (category Cf: zero-width space and joiners, bidi controls, word
  joiner, soft hyphen, tag characters, BOM), control characters other than tab, newline and
  carriage return, surrogates, private-use and unassigned code points, variation selectors
  and the combining grapheme joiner;
- every space separator (Zs: no-break, en/em, ideographic ...) and the blanks that render as
  space (braille blank U+2800, Hangul fillers U+115F, U+1160, U+3164, U+FFA0) become a plain
  space; line and paragraph separators become a newline;
- NFKC: compatibility forms read as their plain letters (fullwidth, mathematical
  alphanumerics, ligatures), and a letter and its accent compose;
- stacked marks: after composition a base keeps its first generic diacritic (the Combining
  Diacritical Marks blocks, which stacking abuses) and at most `MAX_MARKS` marks in all, so
  accented Latin, Vietnamese and Indic or Arabic vowel signs survive and a stack does not.

Only the classifier's view changes: what a session releases is the caller's own text, byte
for byte (`StreamNormalizer` keeps, for each normalised character, where it came from).
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

MAX_MARKS = 4  # marks kept on one base in all (Indic and Arabic signs stack two or three)
CLUSTER_CAP = 64  # a cluster longer than this (a heap of marks) is cut here, so work stays bounded

_DROP, _SPACE, _NEWLINE, _MARK, _BASE = range(5)
_BLANKS = {0x2800, 0x115F, 0x1160, 0x3164, 0xFFA0}
_INVISIBLE_MARKS = {0x034F}  # combining grapheme joiner
_GENERIC_MARKS = ((0x0300, 0x036F), (0x1AB0, 0x1AFF), (0x1DC0, 0x1DFF), (0x20D0, 0x20FF), (0xFE20, 0xFE2F))
_PLAIN = re.compile(r"[\t\n\r\x20-\x7e]*")  # printable ASCII: already what the classifier reads


@lru_cache(maxsize=8192)
def _kind(ch: str) -> int:
    code = ord(ch)
    if ch in "\t\n\r":
        return _BASE
    if 0xFE00 <= code <= 0xFE0F or 0xE0100 <= code <= 0xE01EF or code in _INVISIBLE_MARKS:
        return _DROP  # variation selectors: invisible
    if code in _BLANKS:
        return _SPACE
    category = unicodedata.category(ch)
    if category in ("Cc", "Cf", "Cs", "Co", "Cn"):
        return _DROP
    if category == "Zs":
        return _SPACE
    if category in ("Zl", "Zp"):
        return _NEWLINE
    if category.startswith("M"):
        return _MARK
    return _BASE


def _generic(ch: str) -> bool:
    code = ord(ch)
    return any(lo <= code <= hi for lo, hi in _GENERIC_MARKS)


@lru_cache(maxsize=8192)
def _cluster(raw: str) -> str:
    """The classifier's view of one cluster (a base and its marks, dropped characters removed)."""
    kept = []
    for ch in raw:
        kind = _kind(ch)
        if kind == _SPACE:
            kept.append(" ")
        elif kind == _NEWLINE:
            kept.append("\n")
        elif kind != _DROP:
            kept.append(ch)
    composed = unicodedata.normalize("NFKC", "".join(kept))
    out: list[str] = []
    marks = generic = 0
    for ch in composed:
        if not unicodedata.category(ch).startswith("M"):
            marks = generic = 0
            out.append(ch)
            continue
        is_generic = _generic(ch)
        if marks >= MAX_MARKS or (is_generic and generic >= 1):
            continue
        marks += 1
        generic += is_generic
        out.append(ch)
    return "".join(out)


def _starts(text: str) -> list[int]:
    """Offsets where a cluster starts: at each base or space (marks and dropped ones attach),
    and every `CLUSTER_CAP` characters inside an over-long cluster. `text` starts a cluster."""
    starts: list[int] = []
    last = 0
    for i, ch in enumerate(text):
        if _kind(ch) in (_BASE, _SPACE, _NEWLINE) or i - last >= CLUSTER_CAP:
            starts.append(i)
            last = i
    return starts


def normalize(text: str) -> str:
    """The text as the classifier reads it (idempotent)."""
    if _PLAIN.fullmatch(text):
        return text
    return normalize_mapped(text)[0]


def normalize_mapped(text: str) -> tuple[str, list[int]]:
    """The normalised text and, for each of its characters, the offset in `text` of the
    cluster it came from (plus a last entry, `len(text)`, for the end)."""
    if _PLAIN.fullmatch(text):
        return text, list(range(len(text) + 1))
    starts = _starts(text)
    if not starts or starts[0] != 0:
        starts.insert(0, 0)  # leading marks or dropped characters: a cluster without a base
    out: list[str] = []
    origin: list[int] = []
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(text)
        piece = _cluster(text[start:end])
        out.append(piece)
        origin.extend([start] * len(piece))
    origin.append(len(text))
    return "".join(out), origin


class StreamNormalizer:
    """Normalises streamed text chunk by chunk, as if it had arrived whole.

    The last cluster waits for the next base character (a combining mark may still follow
    it), so any chunking yields the same normalised text; offsets refer to the whole stream.
    """

    def __init__(self) -> None:
        self.raw = ""  # everything received, exactly as received
        self.done = 0  # offset in `raw` up to which clusters are complete and normalised

    def feed(self, chunk: str, *, final: bool = False) -> tuple[str, list[int]]:
        """Add a chunk; return the newly complete normalised text and its origins in `raw`
        (one entry per character plus the end offset)."""
        self.raw += chunk
        tail = self.raw[self.done :]
        cut = len(tail)
        if not final:
            starts = _starts(tail)
            cut = starts[-1] if starts else 0
        if cut <= 0 and not (final and tail):
            return "", [self.done]
        text, origin = normalize_mapped(tail[:cut])
        base = self.done
        self.done += cut
        return text, [base + o for o in origin]
