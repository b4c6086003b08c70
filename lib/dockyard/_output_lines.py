"""A worker's output, from the engine's raw bytes to masked lines.

The way in: Docker's multiplexed attach/log stream (`FrameDecoder`: 8-byte frame headers,
stream type and size, split across arbitrary chunks), or `(stream, bytes)` chunks read
with docker-py's own frame helpers. Per stream, bytes are cut into lines (`LineSplitter`:
`\\n` removed, a trailing `\\r` too, a line longer than `MAX_LINE_BYTES` split at a
character boundary) and only then decoded as UTF-8 with replacement, so a character split
across two writes decodes whole.

Every line is masked (`LineMasker`) before anything sees it: the host's listener, the log,
the tail and a file. A secret the worker wrote in two writes is one line by then. A secret
spread over a line break is covered in two ways:

- a secret value that holds line breaks itself (a PEM certificate) is masked line by line:
  each of its lines is masked as a value of its own;
- a secret the worker printed with a line break inserted (`print(s[:n]); print(s[n:])`,
  or a wrapped line): each line is masked joined to the end of the line before it, so the
  part after the break is masked; and a line whose end could begin a secret (its last
  `MIN_HELD_PREFIX` or more characters are a beginning of one) is held back until the next
  line shows whether it does, so the part before the break is masked too. A held line is
  released with the next line or at the end of the output. Secrets longer than
  `MAX_JOINED_SECRET` characters are not followed across a line break.
"""

from __future__ import annotations

import codecs
import struct
from typing import TYPE_CHECKING, Literal

from docker.utils.socket import STDERR, STDOUT

from ._secrets import MASK, MIN_SUBSTRING_LENGTH, Masker

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

__all__ = [
    "MAX_LINE_BYTES",
    "STREAMS",
    "STREAM_NAMES",
    "FrameDecoder",
    "LineAssembler",
    "LineMasker",
    "LineSplitter",
    "Stream",
    "lines_of_frames",
    "tail_extra",
]

Stream = Literal["stdout", "stderr"]
STREAM_NAMES: dict[int, Stream] = {STDOUT: "stdout", STDERR: "stderr"}
STREAMS: tuple[Stream, ...] = ("stdout", "stderr")

MAX_LINE_BYTES = 64 * 1024
# A held line's end must show at least this much of a secret: fewer characters give
# nothing away, and holding every line that ends in a common letter would delay output.
MIN_HELD_PREFIX = 3
MAX_JOINED_SECRET = 256
# The tail in a Sentry event: its last characters (an event is not a log store).
TAIL_EXTRA_CHARS = 16 * 1024

# Docker's frame header, as docker-py's `next_frame_header` reads it.
_HEADER = struct.Struct(">BxxxL")


class FrameDecoder:
    """Docker's multiplexed stream, decoded incrementally: `feed` any chunk of bytes,
    get the `(stream type, payload)` pieces it completes (a frame's payload may come in
    several pieces). Stream types other than stdout and stderr (stdin echo) are dropped."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._stream = 0
        self._left = 0  # payload bytes of the current frame still to come

    def feed(self, chunk: bytes) -> list[tuple[int, bytes]]:
        self._buffer += chunk
        pieces: list[tuple[int, bytes]] = []
        while self._buffer:
            if self._left == 0:
                if len(self._buffer) < _HEADER.size:
                    break
                self._stream, self._left = _HEADER.unpack_from(self._buffer)
                del self._buffer[: _HEADER.size]
                continue
            take = min(self._left, len(self._buffer))
            payload = bytes(self._buffer[:take])
            del self._buffer[:take]
            self._left -= take
            if self._stream in STREAM_NAMES:
                pieces.append((self._stream, payload))
        return pieces

    @property
    def pending(self) -> int:
        """Bytes held back: an incomplete header (a stream cut mid-frame ends here)."""
        return len(self._buffer)


class LineSplitter:
    """One stream's bytes cut into lines: newline and a trailing `\\r` removed, a line
    longer than `max_bytes` split before a character that would not fit. Decoding comes
    after, on whole lines."""

    def __init__(self, max_bytes: int = MAX_LINE_BYTES) -> None:
        self._max = max(4, max_bytes)
        self._partial = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        parts = data.split(b"\n")
        if len(parts) == 1:  # no line ended
            self._partial += data
            return self._cut(bytes(self._partial), final=False) if self._overlong() else []
        parts[0] = bytes(self._partial + parts[0])
        self._partial = bytearray(parts.pop())
        lines: list[bytes] = []
        for part in parts:
            if len(part) > self._max:
                lines.extend(self._cut(part, final=True))  # it removes the `\r` too
            else:
                lines.append(part[:-1] if part.endswith(b"\r") else part)
        if self._overlong():
            lines.extend(self._cut(bytes(self._partial), final=False))
        return lines

    def feed_text(self, data: bytes) -> list[str]:
        """`feed`, its lines decoded (`_decode_all`). A chunk with no `\r` whose lines
        cannot be too long (the common case) is decoded whole and split once: no bytes
        object per line, no join."""
        end = data.rfind(b"\n")
        partial = self._partial
        if (
            end < 0
            or b"\r" in data
            or len(partial) + len(data) > self._max
            or partial.endswith(b"\r")
        ):
            return _decode_all(self.feed(data))
        text = _decode(bytes(partial) + data[:end] if partial else data[:end])
        self._partial = bytearray(data[end + 1 :])
        return text.split("\n")

    def _overlong(self) -> bool:
        return len(self._partial) > self._max

    def flush(self) -> list[bytes]:
        """The last line, when the output ended without a newline."""
        if not self._partial:
            return []
        rest = bytes(self._partial)
        self._partial.clear()
        return self._cut(rest, final=True)

    def _cut(self, line: bytes, *, final: bool) -> list[bytes]:
        """Split `line` into pieces of at most `max_bytes`; when not `final`, keep the
        remainder (shorter than a piece) as the partial line."""
        pieces: list[bytes] = []
        while len(line) > self._max:
            cut = self._max
            # Back up to a character's first byte (never more than a character's length).
            while cut > self._max - 3 and line[cut] & 0xC0 == 0x80:
                cut -= 1
            pieces.append(line[:cut])
            line = line[cut:]
        if final:
            if line.endswith(b"\r"):
                line = line[:-1]
            pieces.append(line)
        else:
            self._partial = bytearray(line)
        return pieces


def _decode(line: bytes) -> str:
    return codecs.decode(line, "utf-8", errors="replace")


def _decode_all(lines: list[bytes]) -> list[str]:
    """Many lines decoded in one call: a newline byte never belongs to a multi-byte
    character, so joining on it and splitting after decodes each line as alone."""
    if len(lines) < 2:
        return [_decode(line) for line in lines]
    return _decode(b"\n".join(lines)).split("\n")


class LineMasker:
    """Masks one stream's lines in order, following secrets across a line break.

    `push(line)` returns the lines ready to go out (zero, one or two: a line may be held
    until the next one, see the module doc); `flush()` the held one at the end.
    """

    def __init__(self, masker: Masker) -> None:
        self._masker = masker
        pieces = {
            piece.strip("\r")
            for value in masker.values
            if "\n" in value
            for piece in value.split("\n")
        }
        pieces = {piece for piece in pieces if len(piece) >= MIN_SUBSTRING_LENGTH}
        self._lines_masker = masker.merged(Masker(frozenset(pieces))) if pieces else masker
        joinable = {
            value
            for value in set(masker.values) | pieces
            if "\n" not in value and MIN_SUBSTRING_LENGTH <= len(value) <= MAX_JOINED_SECRET
        }
        self._joinable = tuple(sorted(joinable))
        # Every run of MIN_HELD_PREFIX characters that can end a secret's beginning: a line
        # whose end is none of them begins no secret (one set look-up for most lines).
        self._beginning_ends = frozenset(
            value[end - MIN_HELD_PREFIX : end]
            for value in joinable
            for end in range(MIN_HELD_PREFIX, len(value))
        )
        self._window = max((len(value) for value in joinable), default=1) - 1
        self._prev = ""  # the previous line's last characters, unmasked
        # The previous line, unmasked, not yet out, and the spans to mask in it so far.
        self._held: tuple[str, list[tuple[int, int]]] | None = None

    @property
    def active(self) -> bool:
        return bool(self._masker)

    def push(self, line: str) -> list[str]:
        if not self.active:
            return [line]
        prev = self._prev
        spans = self._lines_masker.spans(prev + line)
        out: list[str] = []
        if self._held is not None:
            held, held_spans = self._held
            crossing = _shifted(spans, len(held) - len(prev), len(held))
            out.append(_apply(held, held_spans + crossing))
            self._held = None
        own = _shifted(spans, -len(prev), len(line))
        self._prev = line[-self._window :] if self._window > 0 else ""
        if self._may_begin_secret(line):
            self._held = (line, own)
        else:
            out.append(_apply(line, own))
        return out

    def push_many(self, lines: list[str]) -> list[str]:
        """`push` of each line in turn, with one search over the lot when none of them
        holds a secret (whole, or across a break): the common case."""
        if not self.active or not lines:
            return lines
        joined = self._prev + "".join(lines)  # every `prev + line` push would search is in it
        if len(lines) == 1 or self._lines_masker.spans(joined):
            return [out for line in lines for out in self.push(line)]
        out: list[str] = []
        if self._held is not None:
            held, held_spans = self._held
            out.append(_apply(held, held_spans))
            self._held = None
        # A line held for the next one goes out unchanged with it: nothing spans the break.
        last = lines[-1]
        out.extend(lines[:-1])
        if self._may_begin_secret(last):
            self._held = (last, [])
        else:
            out.append(last)
        self._prev = last[-self._window :] if self._window > 0 else ""
        return out

    def flush(self) -> list[str]:
        """The held line, if any (the output ended)."""
        held, self._held = self._held, None
        self._prev = ""
        return [] if held is None else [_apply(*held)]

    def _may_begin_secret(self, line: str) -> bool:
        """The line ends with a beginning (`MIN_HELD_PREFIX`+ characters, not the whole)
        of a secret: the next line may hold the rest."""
        if not self._joinable or line[-MIN_HELD_PREFIX:] not in self._beginning_ends:
            return False
        window = line[-self._window :]
        for value in self._joinable:
            head = value[:MIN_HELD_PREFIX]
            start = max(0, len(window) - len(value) + 1)
            at = window.find(head, start)
            while at >= 0:
                if value.startswith(window[at:]):
                    return True
                at = window.find(head, at + 1)
        return False


def _shifted(spans: list[tuple[int, int]], offset: int, length: int) -> list[tuple[int, int]]:
    """`spans` moved by `offset` and clipped to `[0, length)`."""
    moved = []
    for start, end in spans:
        lo, hi = max(0, start + offset), min(length, end + offset)
        if lo < hi:
            moved.append((lo, hi))
    return moved


def _apply(text: str, spans: list[tuple[int, int]]) -> str:
    """`text` with each span replaced by the mask; overlapping spans merge."""
    if not spans:
        return text
    parts: list[str] = []
    at = 0
    for begin, end in sorted(spans):
        if end <= at:
            continue
        parts.append(text[at : max(begin, at)])
        parts.append(MASK)
        at = end
    parts.append(text[at:])
    return "".join(parts)


class LineAssembler:
    """Both streams of one worker: `(stream type, bytes)` pieces of any size in,
    `(stream, masked lines)` out, in order; `flush` gives each stream's unfinished line."""

    def __init__(self, masker: Masker, max_bytes: int = MAX_LINE_BYTES) -> None:
        self._splitters = {name: LineSplitter(max_bytes) for name in STREAMS}
        self._maskers = {name: LineMasker(masker) for name in STREAMS}

    def feed(self, stream_type: int, data: bytes) -> list[tuple[Stream, list[str]]]:
        name = STREAM_NAMES.get(stream_type)
        if name is None:
            return []
        lines = self._maskers[name].push_many(self._splitters[name].feed_text(data))
        return [(name, lines)] if lines else []

    def flush(self) -> list[tuple[Stream, list[str]]]:
        out: list[tuple[Stream, list[str]]] = []
        for name in STREAMS:
            masker = self._maskers[name]
            lines = [
                line for raw in self._splitters[name].flush() for line in masker.push(_decode(raw))
            ]
            lines += masker.flush()
            if lines:
                out.append((name, lines))
        return out


def lines_of_frames(
    frames: Iterable[tuple[int, bytes]], masker: Masker, max_bytes: int = MAX_LINE_BYTES
) -> Iterator[tuple[Stream, str]]:
    """`(stream, masked line)` in order, from `(stream type, bytes)` pieces of any size;
    each stream's unfinished last line comes at the end."""
    assembler = LineAssembler(masker, max_bytes)
    for stream_type, data in frames:
        for stream, lines in assembler.feed(stream_type, data):
            yield from ((stream, line) for line in lines)
    for stream, lines in assembler.flush():
        yield from ((stream, line) for line in lines)


def tail_extra(tail: Iterable[str]) -> str:
    """The tail as one string for a Sentry extra: its last `TAIL_EXTRA_CHARS` characters."""
    text = "\n".join(tail)
    return text if len(text) <= TAIL_EXTRA_CHARS else "…" + text[-TAIL_EXTRA_CHARS:]
