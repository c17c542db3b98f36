"""Live transcription: a growing audio buffer re-decoded every update, committed by LocalAgreement-2, with
the previous update's hypothesis as the draft.

The policy is whisper_streaming's (Macháček et al. 2023): keep at most one 30-s window of audio, decode it
again every `update_s` seconds of new audio, commit the longest prefix on which two consecutive hypotheses
agree (LocalAgreement-2), trim the buffer at the end of a segment whose text is all committed, and condition
each decode on the committed text before the buffer (the prompt). Each update decodes its buffer exactly as
the target alone would (greedy, same prompt): only the number of target passes changes.

What is new is the draft. Audio already heard was transcribed by the previous update, and the target mostly
writes the same tokens again; so `HypothesisDrafter` proposes the previous hypothesis's tokens where they
continue the committed sequence (a lookup, no model pass at all), and the self draft beyond them (the new
second of audio). Greedy verification keeps every update's tokens the target's own.

Times: a commit's `end` is the end of the segment its last token is in when the hypothesis closed that
segment with a timestamp; in a segment still open, it is estimated by the token's share of the segment's
characters between the segment's start and the audio heard so far. `committed_at` is the stream's clock
when the update that committed it finished: by default the audio received plus the update's own compute
time (a real-time source that is never kept waiting), or the caller's clock.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from difflib import SequenceMatcher
from typing import Any

import numpy as np
import torch

from .audio import N_FRAMES, N_SAMPLES, SAMPLE_RATE, TIME_PRECISION, LogMelWindows
from .decoding import DecodingOptions, DecodingTask, check_options, detect_language
from .draft_factory import make_drafter
from .drafting import Drafter, NoDraft, Proposal, TreeProposal, Window
from .errors import InvalidOptionError
from .models import LoadedModel
from .results import Result, Segment
from .sampling import TokenChoice
from .timing import UNSPACED_LANGUAGES
from .transcribe import SILENCE_PEAK, TranscribeOptions, _is_silence

MAX_BUFFER_S = N_SAMPLES / SAMPLE_RATE  # one window
REWRITE_SLACK = 4  # a hypothesis may rewrite committed text this many tokens longer or shorter
LOOKUP_NGRAM = 2  # after a mismatch, the hypothesis is found again by the last this many tokens


class HypothesisDrafter(Drafter):
    """Proposes the previous hypothesis where it continues a sequence, then `inner`'s draft beyond it.

    For deterministic verification (greedy, coupled sampling): the lookup's tokens come with no q.
    """

    def __init__(self, inner: Drafter) -> None:
        self.inner = inner
        self.name = f"hypothesis+{inner.name}"
        self.step = inner.step or "lookup"
        self.hypothesis: list[int] = []
        self.sample_begin = 0
        # every proposal of the current window: (tokens committed before it, lookup tokens, all its tokens)
        self.proposals: list[tuple[int, int, list[int]]] = []

    def expect(self, hypothesis: list[int], sample_begin: int) -> None:
        """The next window's hypothesis to propose from (sampled tokens), and where its sampling begins."""
        self.hypothesis = list(hypothesis)
        self.sample_begin = sample_begin
        self.proposals = []

    def start(self, window: Window) -> None:
        self.inner.start(window)

    @property
    def n_passes(self) -> int:
        return self.inner.n_passes

    def lookup(self, sequence: list[int], until: int) -> list[int]:
        """The hypothesis's tokens that continue `sequence` (at most up to `until` tokens in all)."""
        hypothesis, sampled = self.hypothesis, sequence[self.sample_begin :]
        n = len(sampled)
        if hypothesis[:n] == sampled:
            continuation = hypothesis[n:]
        else:  # diverged: find the sequence's last tokens in the hypothesis again (its latest occurrence)
            continuation = []
            tail = sampled[-LOOKUP_NGRAM:]
            if len(tail) == LOOKUP_NGRAM:
                for i in range(len(hypothesis) - LOOKUP_NGRAM, -1, -1):
                    if hypothesis[i : i + LOOKUP_NGRAM] == tail:
                        continuation = hypothesis[i + LOOKUP_NGRAM :]
                        break
        return continuation[: max(0, until - len(sequence))]

    def propose(
        self, sequences: list[list[int]], until: int, choice: TokenChoice, rows: Sequence[int]
    ) -> list[Proposal]:
        looked_up = [self.lookup(s, until) for s in sequences]
        need = [
            i
            for i, (s, found) in enumerate(zip(sequences, looked_up, strict=True))
            if len(s) + len(found) < until
        ]
        beyond: dict[int, Proposal] = {}
        if need:
            drafted = self.inner.propose(
                [sequences[i] + looked_up[i] for i in need], until, choice, [rows[i] for i in need]
            )
            beyond = dict(zip(need, drafted, strict=True))
        out = []
        for i, (sequence, found) in enumerate(zip(sequences, looked_up, strict=True)):
            more = beyond.get(i)
            proposal = Proposal(found + (more.tokens if more else [])) if found else more or Proposal([])
            self.proposals.append((len(sequence), len(found), proposal.tokens))
            out.append(proposal)
        return out

    def propose_beams(
        self, roots: list[list[int]], root_scores: list[float], k: int, width: int
    ) -> TreeProposal:
        return self.inner.propose_beams(roots, root_scores, k, width)

    def accepted(self, committed: list[int]) -> tuple[int, int]:
        """Of the window's accepted draft tokens, how many the lookup proposed and how many the inner
        draft did: each proposal stood as far as it matches what was committed (`committed`: the whole
        sequence, prompt included, and EOT if the window ended on it)."""
        from_hypothesis = from_draft = 0
        for n_before, n_found, tokens in self.proposals:
            n = 0
            while n < len(tokens) and n_before + n < len(committed) and tokens[n] == committed[n_before + n]:
                n += 1
            from_hypothesis += min(n, n_found)
            from_draft += max(0, n - n_found)
        return from_hypothesis, from_draft


@dataclass(frozen=True)
class LiveOptions:
    update_s: float = 1.0  # decode again after this much new audio
    max_buffer_s: float = MAX_BUFFER_S  # the buffer is trimmed before it outgrows this
    keep_after_silence_s: float = 2.0  # a silent buffer keeps only this much of its end
    hypothesis_draft: bool = True  # propose the previous hypothesis (with a draft: before it)

    def __post_init__(self) -> None:
        if not 0.1 <= self.update_s <= 10:
            raise InvalidOptionError(f"update_s (--update-s) must be 0.1 to 10 seconds, got {self.update_s}")
        if not 2 * self.update_s <= self.max_buffer_s <= MAX_BUFFER_S:
            raise InvalidOptionError(
                f"max_buffer_s must be {2 * self.update_s:g} to {MAX_BUFFER_S:g} s, got {self.max_buffer_s}"
            )
        if not 0 <= self.keep_after_silence_s < self.max_buffer_s - self.update_s:
            raise InvalidOptionError("keep_after_silence_s must be 0 to below max_buffer_s - update_s")


@dataclass
class Commit:
    """Text that will not change: `start`/`end` in the stream's audio time (see the module doc for `end`),
    `committed_at` the stream's clock when it was committed (latency = committed_at - end)."""

    text: str
    tokens: list[int]
    start: float
    end: float
    committed_at: float
    closes_segment: bool = False  # its last token ends a segment the target closed with a timestamp

    def to_dict(self) -> dict[str, Any]:
        return {"type": "commit", **asdict(self)}


@dataclass
class Update:
    """One update's figures."""

    audio_s: float  # audio received when it ran
    buffer_s: float
    time_s: float  # its compute time (log-mel, encoder, decoding)
    target_passes: int
    plain_passes: int  # plain decoding's passes for the same tokens
    tokens: int
    accepted_from_hypothesis: int
    accepted_from_draft: int
    committed_tokens: int
    tentative: str  # the hypothesis beyond what is committed
    hypothesis: list[int] = field(default_factory=list, repr=False)  # its tokens (times from the buffer)


@dataclass
class LiveStats:
    updates: list[Update] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)  # per commit: committed_at - end
    revisions: int = 0  # updates whose hypothesis rewrote text already committed (it is kept as committed)
    forced_trims: int = 0  # buffers cut at the window's limit before a segment end was agreed
    lagging_updates: int = 0  # updates that took longer than the update interval

    def to_dict(self) -> dict[str, Any]:
        updates = self.updates
        lat = sorted(self.latencies_s)
        n = len(updates)
        return {
            "latency_mean_s": round(sum(lat) / len(lat), 3) if lat else None,
            "latency_p95_s": round(lat[min(len(lat) - 1, math.ceil(0.95 * len(lat)) - 1)], 3)
            if lat
            else None,
            "updates": n,
            "update_time_mean_s": round(sum(u.time_s for u in updates) / n, 4) if n else None,
            "update_time_max_s": round(max((u.time_s for u in updates), default=0.0), 4),
            "lagging_updates": self.lagging_updates,
            "target_passes": sum(u.target_passes for u in updates),
            "plain_passes": sum(u.plain_passes for u in updates),
            "tokens": sum(u.tokens for u in updates),
            "accepted_from_hypothesis": sum(u.accepted_from_hypothesis for u in updates),
            "accepted_from_draft": sum(u.accepted_from_draft for u in updates),
            "revisions": self.revisions,
            "forced_trims": self.forced_trims,
        }


@dataclass
class LiveResult(Result[LiveStats]):
    """A finished stream as the writers take it (txt, srt, vtt, json), like a `TranscriptionResult`."""


@dataclass
class _Piece:
    """A segment of a hypothesis: its text tokens' indices among the hypothesis's text tokens."""

    start: float  # seconds from the buffer's start
    end: float | None  # None: still open
    first: int
    stop: int
    closed_by_next: bool  # another segment follows it in the hypothesis


class LiveStream:
    """feed(samples) -> commits, as audio arrives (16 kHz float32 mono); finish() -> the last commits;
    `text` and `segments()` the committed transcript. Greedy decoding at temperature 0."""

    def __init__(
        self,
        model: LoadedModel,
        options: DecodingOptions | None = None,
        live: LiveOptions | None = None,
        transcribe_options: TranscribeOptions | None = None,
        clock: Callable[[], float] | None = None,
        drafter: Drafter | None = None,
    ) -> None:
        options = options or DecodingOptions()
        if options.strategy != "greedy":
            raise InvalidOptionError("live transcription decodes greedily: no beam size, temperature 0")
        check_options(model, options)
        self.model, self.options = model, options
        self.live = live or LiveOptions()
        self.rules = transcribe_options or TranscribeOptions(temperature=(0.0,))
        self.clock = clock
        inner = drafter if drafter is not None else make_drafter(options.draft, model)
        self.drafter: Drafter = inner
        if self.live.hypothesis_draft:
            self.drafter = HypothesisDrafter(NoDraft() if inner.name == "none" else inner)
        self.language = options.language if model.tokenizer.multilingual else "en"
        self.stats = LiveStats()
        self.commits: list[Commit] = []
        self._buffer = np.zeros(0, dtype=np.float32)
        self._buffer_start_s = 0.0  # the stream time of the buffer's first sample
        self._received = 0  # samples fed in all
        self._since_update = 0  # samples fed since the last update
        self._prompt: list[int] = []  # committed text tokens before the buffer
        self._in_buffer: list[int] = []  # committed text tokens of the buffer's audio
        self._previous: list[int] = []  # the last hypothesis (sampled tokens, times from the buffer's start)
        self._busy_until = 0.0  # simulated clock: when the last update finished
        self._accepted = (0, 0)  # the last update's accepted tokens: from the hypothesis, from the draft
        self.finished = False

    # -- feeding -----------------------------------------------------------------------------------------

    @property
    def received_s(self) -> float:
        return self._received / SAMPLE_RATE

    def feed(self, samples: np.ndarray) -> list[Commit]:
        """Append audio; decode again if an update interval of new audio has arrived. Returns the commits."""
        if self.finished:
            raise InvalidOptionError("feed after finish")
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        self._buffer = np.concatenate([self._buffer, samples])
        self._received += samples.shape[0]
        self._since_update += samples.shape[0]
        if self._since_update < self.live.update_s * SAMPLE_RATE:
            return []
        if self.clock is None and self._busy_until > self.received_s:
            return []  # simulated real time: the last update is still running; this audio waits for it
        return self._update(final=False)

    def finish(self) -> list[Commit]:
        """The end of the stream: the buffer decoded once more and all of its text committed."""
        if self.finished:
            return []
        commits = self._update(final=True) if self._buffer.shape[0] else []
        self.finished = True
        return commits

    @property
    def text(self) -> str:
        return "".join(c.text for c in self.commits).strip()

    @property
    def tentative(self) -> str:
        """The latest hypothesis beyond what is committed (may still change)."""
        return self.stats.updates[-1].tentative if self.stats.updates else ""

    def segments(self) -> list[Segment]:
        """The committed text as segments: the commits joined up to each segment end the target closed."""
        segments: list[Segment] = []
        group: list[Commit] = []
        for i, commit in enumerate(self.commits):
            group.append(commit)
            if commit.closes_segment or i == len(self.commits) - 1:
                segments.append(
                    Segment(
                        id=len(segments),
                        start=group[0].start,
                        end=group[-1].end,
                        text="".join(c.text for c in group),
                        tokens=[t for c in group for t in c.tokens],
                    )
                )
                group = []
        return segments

    def result(self) -> LiveResult:
        """The committed transcript, its segments and the figures (after `finish()`, the whole stream)."""
        return LiveResult(
            text=self.text,
            language=self.language or "",
            segments=self.segments(),
            duration_s=round(self.received_s, 3),
            stats=self.stats,
        )

    # -- one update --------------------------------------------------------------------------------------

    def _update(self, final: bool) -> list[Commit]:
        started = time.perf_counter()
        self._since_update = 0
        tokenizer = self.model.tokenizer
        hypothesis, result = self._decode()
        ts_begin = tokenizer.timestamp_begin
        text = [t for t in hypothesis if t < ts_begin]
        previous_text = [t for t in self._previous if t < ts_begin]
        # where this hypothesis's committed part ends (it may have rewritten some of it: kept as committed),
        # and the previous one's: LocalAgreement-2 compares what follows
        done = _committed_end(self._in_buffer, text)
        if text[:done] != self._in_buffer:
            self.stats.revisions += 1
        previous_done = _committed_end(self._in_buffer, previous_text)
        agreed = 0
        if final:
            agreed = len(text) - done
        else:
            tail, previous_tail = text[done:], previous_text[previous_done:]
            while agreed < min(len(tail), len(previous_tail)) and tail[agreed] == previous_tail[agreed]:
                agreed += 1
            if self.language not in UNSPACED_LANGUAGES:
                # whole words only: the next update may finish a word the agreed part ends inside otherwise
                while 0 < agreed < len(tail) and _continues_word(tokenizer.decode([tail[agreed]])):
                    agreed -= 1
        pieces = _pieces(hypothesis, ts_begin, self._buffer.shape[0] / SAMPLE_RATE)
        commits: list[Commit] = []
        committed_at = self._now(time.perf_counter() - started)
        if agreed:
            new = text[done : done + agreed]
            commits.append(self._commit(new, done, done + agreed, pieces, hypothesis, committed_at))
            self._in_buffer = self._in_buffer + new
            done += agreed
        self._previous = hypothesis
        self._trim(pieces, hypothesis, text, done, committed_at, commits)
        update_s = time.perf_counter() - started
        self.stats.lagging_updates += int(update_s > self.live.update_s)
        loop = result.loop if result is not None else None
        from_hyp = from_draft = 0
        if result is not None and isinstance(self.drafter, HypothesisDrafter):
            from_hyp, from_draft = self._accepted
        self.stats.updates.append(
            Update(
                audio_s=round(self.received_s, 3),
                buffer_s=round(self._buffer.shape[0] / SAMPLE_RATE, 3),
                time_s=update_s,
                target_passes=loop.n_target_passes if loop else 0,
                plain_passes=loop.plain_passes if loop else 0,
                tokens=len(hypothesis),
                accepted_from_hypothesis=from_hyp,
                accepted_from_draft=from_draft,
                committed_tokens=sum(len(c.tokens) for c in commits),
                tentative=tokenizer.decode(
                    _tail(self._in_buffer, [t for t in self._previous if t < ts_begin])
                ),
                hypothesis=hypothesis,
            )
        )
        self.commits.extend(commits)
        for c in commits:
            self.stats.latencies_s.append(c.committed_at - c.end)
        return commits

    def _now(self, elapsed: float) -> float:
        """The stream's clock after an update of `elapsed` seconds' compute that started now."""
        if self.clock is not None:
            return self.clock()
        # a real-time source: the update starts when its audio has arrived or the last update ended
        start = max(self.received_s, self._busy_until)
        self._busy_until = start + elapsed
        return self._busy_until

    def _decode(self) -> tuple[list[int], Any]:
        """The buffer decoded by the target (greedy, prompted with the committed text before it)."""
        model, buffer = self.model, self._buffer
        if not buffer.shape[0] or float(np.abs(buffer).max()) < SILENCE_PEAK:
            return [], None
        mel = LogMelWindows(model.dims.n_mels, padding=N_SAMPLES, device=model.device)
        mel.add(buffer)
        window = mel.finish().window(0, N_FRAMES)
        with torch.inference_mode():
            features = model.model.encoder(window.unsqueeze(0).to(model.dtype))
        if self.language is None:
            self.language, _ = detect_language(model, features)
        options = replace(self.options, language=self.language)
        task = DecodingTask(model, options, self.language, self._prompt)
        if isinstance(self.drafter, HypothesisDrafter):
            self.drafter.expect(self._previous, task.sample_begin)
        result = task.run(features, window, self.drafter)
        if isinstance(self.drafter, HypothesisDrafter):
            committed = task.initial_tokens + result.tokens
            if len(result.tokens) < task.sample_len:
                committed = [*committed, model.tokenizer.eot]
            self._accepted = self.drafter.accepted(committed)
        if _is_silence(result, self.rules):
            return [], result
        return result.tokens, result

    def _commit(
        self, tokens: list[int], first: int, stop: int, pieces: list[_Piece], hypothesis: list[int], at: float
    ) -> Commit:
        tokenizer = self.model.tokenizer
        start = next(
            (p.start for p in pieces if p.first <= first < p.stop), pieces[-1].start if pieces else 0.0
        )
        end = _end_of(stop - 1, pieces, hypothesis, tokenizer, self._buffer.shape[0] / SAMPLE_RATE)
        offset = self._buffer_start_s
        return Commit(
            text=tokenizer.decode(tokens),
            tokens=tokens,
            start=round(offset + start, 3),
            end=round(offset + max(end, start), 3),
            committed_at=round(at, 3),
            closes_segment=any(p.stop == stop and p.end is not None for p in pieces),
        )

    def _trim(
        self,
        pieces: list[_Piece],
        hypothesis: list[int],
        text: list[int],
        done: int,
        at: float,
        commits: list[Commit],
    ) -> None:
        """Cut the buffer at the end of the last segment whose text is all committed (`done`: where the
        committed part of `text`, the hypothesis's text tokens, ends) and that another segment follows;
        before the buffer outgrows the window, at the last segment end there is (its text committed), or
        all of it; a silent buffer keeps only its last seconds."""
        n_samples = self._buffer.shape[0]
        if not text:
            keep = int(self.live.keep_after_silence_s * SAMPLE_RATE)
            if n_samples > keep + self.live.update_s * SAMPLE_RATE:
                self._cut(n_samples - keep, [])
            return
        closed = [p for p in pieces if p.closed_by_next and p.end is not None]
        cut = next((p for p in reversed(closed) if p.stop <= done), None)
        if cut is None and n_samples / SAMPLE_RATE + self.live.update_s > self.live.max_buffer_s:
            # the next update would not fit: commit up to the last segment end there is, or everything
            self.stats.forced_trims += 1
            cut = closed[-1] if closed else None
            stop = cut.stop if cut is not None else len(text)
            if stop > done:
                commits.append(self._commit(text[done:stop], done, stop, pieces, hypothesis, at))
                self._in_buffer = self._in_buffer + text[done:stop]
                done = stop
            if cut is None:
                self._cut(n_samples, [])
                return
        if cut is not None and cut.end is not None:
            frames = round(cut.end / TIME_PRECISION)
            previous = _shifted_after(hypothesis, cut, frames, self.model.tokenizer.timestamp_begin)
            self._cut(min(n_samples, round(cut.end * SAMPLE_RATE)), previous, text[cut.stop : done])

    def _cut(self, n_samples: int, previous: list[int], kept: list[int] | None = None) -> None:
        """Drop the buffer's first n_samples; the committed text they held goes to the prompt, and `kept`
        (committed text after the cut, as the hypothesis has it) stays the buffer's."""
        kept = kept or []
        self._buffer = self._buffer[n_samples:]
        self._buffer_start_s += n_samples / SAMPLE_RATE
        n_gone = max(0, len(self._in_buffer) - len(kept))
        self._prompt = self._prompt + self._in_buffer[:n_gone]
        self._in_buffer = list(kept)
        self._previous = previous


def _committed_end(committed: list[int], text: list[int]) -> int:
    """Where `committed` ends in `text`: after its last stretch that `text` has too (a hypothesis may
    rewrite some of what was committed, e.g. a comma for a full stop), and as many tokens on."""
    if not committed:
        return 0
    if text[: len(committed)] == committed:
        return len(committed)
    blocks = [
        # within a few tokens of the committed length: a rewrite is local, and a later repeat of the last
        # committed words ("words words words") must not pass for them
        b
        for b in SequenceMatcher(
            None, committed, text[: len(committed) + REWRITE_SLACK], autojunk=False
        ).get_matching_blocks()
        if b.size
    ]
    if not blocks:
        return min(len(committed), len(text))
    last = blocks[-1]
    return min(len(text), last.b + last.size + (len(committed) - last.a - last.size))


def _continues_word(piece: str) -> bool:
    """A token's text that goes on the word before it (no space first, a letter or digit)."""
    return bool(piece) and piece[0].isalnum()


def _tail(committed: list[int], text: list[int]) -> list[int]:
    return text[_committed_end(committed, text) :]


def _pieces(hypothesis: list[int], ts_begin: int, buffer_s: float) -> list[_Piece]:
    """The hypothesis's segments, with their text tokens' places among its text tokens."""
    pieces: list[_Piece] = []
    start: float | None = None
    first = n_text = 0
    for i, t in enumerate(hypothesis):
        if t >= ts_begin:
            seconds = (t - ts_begin) * TIME_PRECISION
            if start is None:
                start, first = seconds, n_text
            else:
                follows = i + 1 < len(hypothesis) and hypothesis[i + 1] >= ts_begin
                pieces.append(_Piece(start, min(seconds, buffer_s), first, n_text, follows))
                start = None
        else:
            if start is None:  # text with no opening timestamp (or after a closed segment)
                start, first = (pieces[-1].end or 0.0) if pieces else 0.0, n_text
            n_text += 1
    if start is not None and n_text > first:
        pieces.append(_Piece(start, None, first, n_text, False))
    return pieces


def _end_of(
    index: int, pieces: list[_Piece], hypothesis: list[int], tokenizer: Any, buffer_s: float
) -> float:
    """When text token `index` ends (seconds from the buffer's start): its segment's end if the segment is
    closed and it is the segment's last token, else estimated by its share of the segment's characters."""
    piece = next((p for p in pieces if p.first <= index < p.stop), None)
    if piece is None:
        return buffer_s
    end = piece.end if piece.end is not None else buffer_s
    if index == piece.stop - 1 and piece.end is not None:
        return end
    text = [t for t in hypothesis if t < tokenizer.timestamp_begin][piece.first : piece.stop]
    lengths = [len(tokenizer.decode([t])) for t in text]
    share = sum(lengths[: index - piece.first + 1]) / max(1, sum(lengths))
    return piece.start + share * (end - piece.start)


def _shifted_after(hypothesis: list[int], cut: _Piece, frames: int, ts_begin: int) -> list[int]:
    """The hypothesis after segment `cut`, its timestamps moved back by `frames` (the trimmed audio)."""
    n_text = 0
    for i, t in enumerate(hypothesis):
        if t < ts_begin:
            n_text += 1
        elif n_text == cut.stop and i + 1 < len(hypothesis) and hypothesis[i + 1] >= ts_begin:
            rest = hypothesis[i + 1 :]
            return [
                t - frames if t >= ts_begin else t for t in rest if t < ts_begin or t - frames >= ts_begin
            ]
    return []


def replay(
    stream: LiveStream, samples: np.ndarray, speed: float = 0.0, chunk_s: float = 0.1
) -> Iterator[Commit]:
    """Feed `samples` to `stream` as a live source would, in chunks of `chunk_s`: at `speed` times real
    time (1: real time, sleeping between chunks), or (0) as fast as the CPU goes, on the stream's
    simulated real-time clock. Yields commits as they come, the final ones included."""
    chunk = max(1, int(chunk_s * SAMPLE_RATE))
    t0 = time.perf_counter()
    for begin in range(0, samples.shape[0], chunk):
        if speed > 0:
            due = t0 + (begin + chunk) / SAMPLE_RATE / speed
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        yield from stream.feed(samples[begin : begin + chunk])
    yield from stream.finish()


def replay_clock(speed: float) -> Callable[[], float] | None:
    """The stream time of a replay at `speed` (None for speed 0: the stream simulates real time)."""
    if speed <= 0:
        return None
    t0 = time.perf_counter()
    return lambda: (time.perf_counter() - t0) * speed
