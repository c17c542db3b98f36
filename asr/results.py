"""Result objects shared by the library, the writers, the CLI and the app."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from .figures import RunStats  # noqa: F401 - named as a string in TranscriptionResult's base


@dataclass
class Word:
    """One word (with the space before it, as the tokens have it), its times in seconds on the audio's
    timeline, and the mean probability of its tokens (asr/timing.py)."""

    word: str
    start: float
    end: float
    probability: float


@dataclass
class Segment:
    """One transcribed span. Times in seconds from the start of the audio; `tokens` are text tokens only."""

    id: int
    start: float
    end: float
    text: str
    tokens: list[int]
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    # Per token: True if the draft proposed it and the target accepted it, False if the target wrote it
    # itself (after a rejection, as its bonus token, or with no draft). Aligned with `tokens`.
    drafted: list[bool] = field(default_factory=list)
    temperature: float = 0.0  # the temperature the window was decoded at (above 0: after a fallback)
    compression_ratio: float = 0.0  # of the window's text (zlib): above 2.4, likely a repetition loop
    words: list[Word] | None = None  # with word timestamps (TranscribeOptions.word_timestamps)


class _Figures(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


S = TypeVar("S", bound=_Figures)


@dataclass
class Result(Generic[S]):
    """A finished transcript: its text, language, segments, the audio's duration and the run's figures."""

    text: str
    language: str
    segments: list[Segment]
    duration_s: float
    stats: S

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "language": self.language,
            "duration_s": self.duration_s,
            "segments": [asdict(s) for s in self.segments],
            "stats": self.stats.to_dict(),
        }


@dataclass
class TranscriptionResult(Result["RunStats"]):
    """What `transcribe()` returns once every segment is produced.

    `stats`: the run's figures (timings in seconds, passes, acceptance, speedup), asr/figures.py.
    """


class Transcript(Protocol):
    """What the writers take: a `TranscriptionResult`, or a finished live stream's `asr.live.LiveResult`."""

    text: str
    language: str
    segments: list[Segment]
    duration_s: float

    def to_dict(self) -> dict[str, Any]: ...
