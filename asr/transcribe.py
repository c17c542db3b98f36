"""Transcribe whole recordings: 30-s windows, seeking by predicted timestamps, language detection.

Long-form follows openai/whisper's transcriber: the audio's log-mel is padded with 30 s of silence, each
window is decoded, complete segments (closed by a timestamp pair) are kept and the next window starts at
the last complete segment's end, so a word cut by a window edge is decoded again whole in the next
window rather than lost or repeated. Without timestamps, windows are simply consecutive.

Results stream (the idea of faster-whisper's transcribe): `Transcriber.stream` returns segments as each
window is decoded, so the CLI and the app can show progress; `transcribe` collects them. A Transcriber
checks its options against the model and builds its drafter once, for as many inputs as it is given; the
figures of each run are asr/figures.py's RunStats.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch

from .audio import HOP_LENGTH, N_FRAMES, N_SAMPLES, SAMPLE_RATE, TIME_PRECISION, LogMelWindows
from .audio_io import DEFAULT_MAX_DURATION_S, AudioSource, load_audio, stream_audio
from .decoding import DecodingOptions, DecodingResult, DecodingTask, check_options, detect_language
from .draft_factory import make_drafter
from .drafting import Drafter, NoDraft
from .errors import InvalidOptionError
from .figures import RunStats, finish, pass_costs, single_pass_time
from .model import CrossKV
from .models import LoadedModel
from .results import Segment, TranscriptionResult
from .timing import add_word_timestamps
from .vad import Timeline, VadOptions, speech_regions

logger = logging.getLogger("asr")

INPUT_STRIDE = N_FRAMES // 1500  # mel frames per encoder position (2): converts timestamps to frames
# A window whose peak is below -60 dBFS is silence: it is not decoded at all. Whisper's own no-speech rule
# (below) lets "you" through on digital silence (P(no speech) 0.93 but an average log-prob above -1).
SILENCE_PEAK = 10 ** (-60 / 20)


@dataclass
class TranscriptionInfo:
    """Known before the first segment (language, duration); `stats` is complete once segments run out."""

    language: str
    language_probability: float
    duration_s: float
    stats: RunStats
    window_tokens: list[list[int]] = field(default_factory=list)  # every decoded window's tokens
    sampling: str = "coupled"  # how windows above temperature 0 were sampled


DEFAULT_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass(frozen=True)
class TranscribeOptions:
    """Long-form behaviour around per-window decoding (openai/whisper's transcribe()).

    Temperature fallback: each window is decoded at temperature[0]; if the result looks wrong (its text's
    compression ratio above compression_ratio_threshold: a repetition loop; or its average log-probability
    below logprob_threshold) it is decoded again at the next temperature (sampling best_of samples), unless
    it is silence (P(no speech) above no_speech_threshold and the log-probability below its threshold).
    When every temperature fails, the result kept is the one with the best average log-probability among
    those under the compression threshold (faster-whisper's rule; openai keeps the last, the most random),
    or of all of them if none is.
    """

    temperature: tuple[float, ...] = DEFAULT_TEMPERATURES  # one value, or the fallback schedule
    compression_ratio_threshold: float | None = 2.4
    condition_on_previous_text: bool = True  # prompt each window with the text so far
    prompt_reset_on_temperature: float = 0.5  # no prompt after a window decoded above this temperature
    initial_prompt: str | None = None  # text to prompt the first window with (spellings, names, style)
    no_speech_threshold: float | None = 0.6  # skip a window whose P(no speech) is above this...
    logprob_threshold: float | None = -1.0  # ...unless its average log-probability is above this
    max_duration_s: float | None = DEFAULT_MAX_DURATION_S
    compare: bool = False  # also run the plain target on the same input: measured speedup, identity check
    word_timestamps: bool = False  # each segment's words with their times (asr/timing.py)
    vad: VadOptions | None = None  # decode only the speech a voice-activity detector finds (asr/vad.py)

    def __post_init__(self) -> None:
        if self.max_duration_s is not None and not self.max_duration_s > 0:
            raise InvalidOptionError(
                f"max_duration (--max-duration) must be > 0 seconds, got {self.max_duration_s}"
            )
        temperature = self.temperature
        temperatures = (temperature,) if isinstance(temperature, int | float) else tuple(temperature)
        if not temperatures:
            raise InvalidOptionError("temperature (--temperature) needs at least one value")
        for t in temperatures:
            # DecodingOptions says what a temperature may be
            DecodingOptions(temperature=t)
        object.__setattr__(self, "temperature", tuple(float(t) for t in temperatures))
        if self.compression_ratio_threshold is not None and not self.compression_ratio_threshold > 0:
            raise InvalidOptionError(
                "compression_ratio_threshold (--compression-ratio-threshold) must be > 0, "
                f"got {self.compression_ratio_threshold}"
            )
        if self.no_speech_threshold is not None and not 0 <= self.no_speech_threshold <= 1:
            raise InvalidOptionError(
                f"no_speech_threshold (--no-speech-threshold) must be 0 to 1, got {self.no_speech_threshold}"
            )


class Transcriber:
    """One run's settings, checked once against the model, and its drafter, built once: give it as many
    inputs as you like (the CLI's batch does). Not for concurrent use: its drafter holds a window's state;
    make one per thread (the heavy parts of a draft are shared)."""

    def __init__(
        self,
        model: LoadedModel,
        options: DecodingOptions | None = None,
        transcribe_options: TranscribeOptions | None = None,
        drafter: Drafter | None = None,
    ) -> None:
        self.model = model
        self.options = options or DecodingOptions()
        self.transcribe_options = transcribe_options or TranscribeOptions()
        check_options(model, self.options)
        if self.options.temperature != 0:
            raise InvalidOptionError(
                "a Transcriber decodes at the temperatures of TranscribeOptions.temperature; "
                "leave DecodingOptions.temperature at 0"
            )
        self._given = drafter
        self._drafters: dict[bool, Drafter] = {}
        self.drafter = self.drafter_for(self.options)  # the first temperature's (0)

    def drafter_for(self, options: DecodingOptions) -> Drafter:
        """The drafter for a decode with these options: beam search's proposes trees of many rows at once
        (asr/draft_factory.py's batched weights); greedy decoding and sampling use the sequence drafter
        (several samples: rows that agree are drafted once). Built once each; a given drafter serves all."""
        if self._given is not None:
            return self._given
        beam = options.strategy == "beam"
        if beam not in self._drafters:
            self._drafters[beam] = make_drafter(self.options.draft, self.model, batched=beam)
        return self._drafters[beam]

    def transcribe(self, audio: AudioSource) -> TranscriptionResult:
        """One recording (a path, encoded bytes, or float samples at 16 kHz) to text and segments."""
        segments, info = self.stream(audio)
        collected = list(segments)
        return TranscriptionResult(
            text="".join(s.text for s in collected).strip(),
            language=info.language,
            segments=collected,
            duration_s=info.duration_s,
            stats=info.stats,
        )

    def stream(self, audio: AudioSource) -> tuple[Iterator[Segment], TranscriptionInfo]:
        """Segments as each window is decoded, and the info. Before it returns, the audio is read and its
        log-mel computed (block by block, interleaved) and its language detected (a multilingual model, no
        language given: one encoder pass); with `compare`, the plain target first transcribes the whole
        input. The windows are decoded as the iterator is advanced."""
        t_start = time.perf_counter()
        timeline = None
        if self.transcribe_options.vad is not None:
            mel, timeline, vad_s = _log_mel_of_speech(
                self.model, audio, self.transcribe_options.max_duration_s, self.transcribe_options.vad
            )
        else:
            mel, vad_s = _log_mel(self.model, audio, self.transcribe_options.max_duration_s), 0.0
        load_s = time.perf_counter() - t_start  # decoding and the log-mel, interleaved
        reference = None
        if self.transcribe_options.compare and not isinstance(self.drafter, NoDraft):
            # The plain target on the same log-mel, first and to completion: the figures compare against
            # it. Its step is timed (and so warmed) before: a cold process's first passes must not slow the
            # run speculation is measured against.
            single_pass_time(self.model, n_rows=self.options.beam_size or 1)
            no_draft = NoDraft()
            plain_segments, reference = self._stream_mel(
                mel, 0.0, 0.0, lambda options: no_draft, None, timeline, 0.0
            )
            for _ in plain_segments:
                pass
        return self._stream_mel(mel, load_s, mel.time_s, self.drafter_for, reference, timeline, vad_s)

    def _stream_mel(
        self,
        mel: LogMelWindows,
        load_s: float,
        mel_s: float,
        drafter_for: Callable[[DecodingOptions], Drafter],
        reference: TranscriptionInfo | None,
        timeline: Timeline | None = None,
        vad_s: float = 0.0,
    ) -> tuple[Iterator[Segment], TranscriptionInfo]:
        """load_s: the time taken to read the audio and make its log-mel, of which mel_s the log-mel and
        vad_s finding the speech; drafter_for: the drafter for a decode with such options; timeline: where
        the speech the log-mel holds lies in the input (with a VAD)."""
        model, options = self.model, self.options
        drafter = drafter_for(options)
        t_start = time.perf_counter() - load_s  # this run's clock: the one audio load, then its own work
        stats = RunStats(
            target=model.name,
            draft=drafter.name,
            draft_step=drafter.step,
            draft_k=options.draft_k if options.draft_k is not None else "adaptive",
            beam_size=options.beam_size,
            device=str(model.device),
            dtype=str(model.dtype).removeprefix("torch."),
        )
        stats.time_s.load_audio = load_s - mel_s - vad_s
        stats.time_s.mel = mel_s
        stats.time_s.vad = vad_s
        if timeline is not None:
            stats.audio_skipped_s = round(timeline.skipped_s, 3)
        # the first window's encoding and cross-attention projection, if language detection made them
        first_window = None
        language, language_probability = options.language, 1.0
        if language is None:
            if model.tokenizer.multilingual:
                features = _encode(model, mel.window(0), stats)
                start = time.perf_counter()
                with torch.inference_mode():
                    cross = model.model.decoder.project_audio(features)
                stats.time_s.cross_kv += time.perf_counter() - start
                first_window = (features, cross)
                language, probs = detect_language(model, features, cross)
                language_probability = probs[language]
            else:
                language = "en"
        duration_s = timeline.duration_s if timeline is not None else mel.n_samples / SAMPLE_RATE
        info = TranscriptionInfo(language, language_probability, duration_s, stats, sampling=options.sampling)
        window_options = replace(options, language=language)
        segments = _segments(
            model, mel, window_options, self.transcribe_options, info, first_window, drafter_for
        )
        if timeline is not None:
            segments = map(timeline.segment, segments)
        return _finished(segments, model, info, t_start, reference), info


def transcribe(
    model: LoadedModel,
    audio: AudioSource,
    options: DecodingOptions | None = None,
    transcribe_options: TranscribeOptions | None = None,
    **option_overrides: Any,
) -> TranscriptionResult:
    """Transcribe one recording (path, encoded bytes, or float samples at 16 kHz) to text and segments.

    Keyword overrides set DecodingOptions or TranscribeOptions fields, e.g. `transcribe(model, "a.wav",
    language="de", temperature=0)`.
    """
    options, transcribe_options = _with_overrides(options, transcribe_options, option_overrides)
    return Transcriber(model, options, transcribe_options).transcribe(audio)


def transcribe_stream(
    model: LoadedModel,
    audio: AudioSource,
    options: DecodingOptions | None = None,
    transcribe_options: TranscribeOptions | None = None,
    **option_overrides: Any,
) -> tuple[Iterator[Segment], TranscriptionInfo]:
    """Like `transcribe`, but segments as they are decoded, and the info (see Transcriber.stream for what
    is done before it returns)."""
    options, transcribe_options = _with_overrides(options, transcribe_options, option_overrides)
    return Transcriber(model, options, transcribe_options).stream(audio)


_TRANSCRIBE_FIELDS = frozenset(f.name for f in fields(TranscribeOptions))


def _with_overrides(
    options: DecodingOptions | None, transcribe_options: TranscribeOptions | None, overrides: dict[str, Any]
) -> tuple[DecodingOptions, TranscribeOptions]:
    """Keyword overrides split between the two option sets (a TranscribeOptions field wins a shared name:
    `temperature` is the fallback schedule)."""
    long_form = {k: v for k, v in overrides.items() if k in _TRANSCRIBE_FIELDS}
    per_window = {k: v for k, v in overrides.items() if k not in _TRANSCRIBE_FIELDS}
    return (
        replace(options or DecodingOptions(), **per_window),
        replace(transcribe_options or TranscribeOptions(), **long_form),
    )


def _finished(
    segments: Iterator[Segment],
    model: LoadedModel,
    info: TranscriptionInfo,
    t_start: float,
    reference: TranscriptionInfo | None,
) -> Iterator[Segment]:
    """`segments`, then the derived figures once they run out."""
    yield from segments
    identical = None if reference is None else reference.window_tokens == info.window_tokens
    if not identical and rejection_sampled(info, reference):
        identical = None  # rejection sampling keeps the distribution, not the tokens: nothing to check
    plain = None if reference is None else reference.stats
    finish(info.stats, model, info.duration_s, t_start, plain, identical)


def rejection_sampled(*runs: TranscriptionInfo | None) -> bool:
    """Whether any of the runs decoded a window by rejection sampling (at a temperature above 0)."""
    return any(
        run is not None
        and run.sampling == "rejection"
        and any(float(t) > 0 for t in run.stats.by_temperature)
        for run in runs
    )


def _log_mel(model: LoadedModel, audio: AudioSource, max_duration_s: float | None) -> LogMelWindows:
    """The log-mel of the whole input plus 30 s of silence, made as the audio is decoded: memory holds the
    log-mel (0.46 GB for 4 h with 80 mels), never all the samples or a whole-input STFT (issue #19)."""
    mel = LogMelWindows(model.dims.n_mels, padding=N_SAMPLES, device=model.device)
    for block in stream_audio(audio, max_duration_s=max_duration_s):
        mel.add(block)
    return mel.finish()


def _log_mel_of_speech(
    model: LoadedModel, audio: AudioSource, max_duration_s: float | None, vad: VadOptions
) -> tuple[LogMelWindows, Timeline, float]:
    """The log-mel of the input's speech only (its regions end to end), where it lies, and the VAD's time.
    The VAD reads the whole input, so its samples are held in memory (230 MB an hour)."""
    samples = load_audio(audio, max_duration_s=max_duration_s)
    started = time.perf_counter()
    timeline = Timeline(speech_regions(samples, vad), samples.shape[0], vad.speech_pad_ms / 1000)
    vad_s = time.perf_counter() - started
    mel = LogMelWindows(model.dims.n_mels, padding=N_SAMPLES, device=model.device)
    mel.add(timeline.join(samples))
    return mel.finish(), timeline, vad_s


def _encode(model: LoadedModel, mel_window: torch.Tensor, stats: RunStats) -> torch.Tensor:
    start = time.perf_counter()
    with torch.inference_mode():
        features = model.model.encoder(mel_window.unsqueeze(0).to(model.dtype))
    stats.time_s.encoder += time.perf_counter() - start
    return features


def _segments(
    model: LoadedModel,
    mel: LogMelWindows,
    options: DecodingOptions,
    transcribe_options: TranscribeOptions,
    info: TranscriptionInfo,
    first_window: tuple[torch.Tensor, CrossKV] | None,
    drafter_for: Callable[[DecodingOptions], Drafter],
) -> Iterator[Segment]:
    tokenizer = model.tokenizer
    stats = info.stats
    content_frames = mel.n_frames - N_FRAMES
    seek = 0
    initial_prompt = transcribe_options.initial_prompt
    all_tokens = tokenizer.encode(" " + initial_prompt.strip()) if initial_prompt else []
    prompt_reset_since = 0  # the prompt is the text since here (openai's rule)
    last_speech = 0.0  # with word timings: where the last word so far ends
    next_id = 0
    while seek < content_frames:
        time_offset = seek * HOP_LENGTH / SAMPLE_RATE
        segment_size = min(N_FRAMES, content_frames - seek)
        segment_duration = segment_size * HOP_LENGTH / SAMPLE_RATE
        if mel.peak(seek, segment_size) < SILENCE_PEAK:
            stats.n_silent_windows += 1
            seek += segment_size
            continue
        mel_window = mel.window(seek, N_FRAMES)
        cross = None
        if seek == 0 and first_window is not None:
            features, cross = first_window
        else:
            features = _encode(model, mel_window, stats)
        if cross is None and transcribe_options.word_timestamps:
            # made here, not in the decoding, so that the word timings' pass reuses it
            start = time.perf_counter()
            with torch.inference_mode():
                cross = model.model.decoder.project_audio(features)
            stats.time_s.cross_kv += time.perf_counter() - start
        window = _Window(features, mel_window, cross, seek, all_tokens[prompt_reset_since:])
        result = _decode_with_fallback(model, options, transcribe_options, window, drafter_for, stats)
        info.window_tokens.append(result.tokens)

        if _is_silence(result, transcribe_options):
            seek += segment_size
            continue
        pieces, seek_frames = _split_by_timestamps(result.tokens, tokenizer.timestamp_begin, segment_size)
        seek += max(seek_frames, 1)
        window_end = time_offset + segment_duration
        drafted = result.loop.drafted  # aligned with result.tokens
        offset = 0  # pieces are consecutive slices of the window's tokens
        window_segments: list[Segment] = []
        for piece_tokens, start_rel, end_rel in pieces:
            piece_drafted = drafted[offset : offset + len(piece_tokens)]
            offset += len(piece_tokens)
            text = tokenizer.decode(piece_tokens)
            all_tokens.extend(piece_tokens)
            if not text.strip():
                continue
            start = time_offset + start_rel
            end = time_offset + (end_rel if end_rel is not None else segment_duration)
            window_segments.append(
                Segment(
                    id=next_id,
                    start=round(min(start, window_end), 3),
                    end=round(min(max(end, start), window_end), 3),
                    text=text,
                    tokens=piece_tokens,
                    avg_logprob=result.avg_logprob,
                    no_speech_prob=result.no_speech_prob,
                    drafted=piece_drafted,
                    temperature=result.temperature,
                    compression_ratio=result.compression_ratio,
                )
            )
            next_id += 1
        if transcribe_options.word_timestamps and window_segments:
            started = time.perf_counter()
            last_speech = add_word_timestamps(
                model,
                features,
                window_segments,
                segment_size,
                time_offset,
                options.language,
                options.task,
                cross,
                last_speech,
            )
            stats.time_s.words += time.perf_counter() - started
        yield from window_segments
        if (
            not transcribe_options.condition_on_previous_text
            or result.temperature > transcribe_options.prompt_reset_on_temperature
        ):
            # a window sampled hot is no model for the next one
            prompt_reset_since = len(all_tokens)


@dataclass(frozen=True)
class _Window:
    features: torch.Tensor  # the target's encoder output
    mel: torch.Tensor
    cross: CrossKV | None  # the features' cross-attention projection, when already made
    seek: int  # the window's first mel frame
    previous_tokens: list[int]  # the text to condition on


def _decode_with_fallback(
    model: LoadedModel,
    options: DecodingOptions,
    transcribe_options: TranscribeOptions,
    window: _Window,
    drafter_for: Callable[[DecodingOptions], Drafter],
    stats: RunStats,
) -> DecodingResult:
    """The window decoded at each temperature in turn until a result passes (TranscribeOptions)."""
    results: list[DecodingResult] = []
    for temperature in transcribe_options.temperature:
        attempt = replace(options, temperature=temperature)
        task = DecodingTask(model, attempt, options.language, window.previous_tokens, window.seek)
        drafter = drafter_for(attempt)
        # whether speculation pays for many rows is timed once per process, per kind of decode
        costs = None
        if attempt.n_rows > 1:
            costs = pass_costs(model, drafter.name, (attempt.strategy, attempt.n_rows, temperature))
        result = task.run(window.features, window.mel, drafter, window.cross, costs)
        stats.add_window(result.loop, len(result.tokens), temperature, attempt.n_rows, retry=bool(results))
        results.append(result)
        if not _needs_fallback(result, transcribe_options):
            return result
        stats.windows_decoded_again += int(len(results) == 1 and len(transcribe_options.temperature) > 1)
    stats.windows_all_temperatures_failed += int(len(results) > 1)
    threshold = transcribe_options.compression_ratio_threshold
    passing = [r for r in results if threshold is None or r.compression_ratio <= threshold]
    return max(passing or results, key=lambda r: r.avg_logprob)


def _needs_fallback(result: DecodingResult, options: TranscribeOptions) -> bool:
    """openai/whisper's rule: a repetition loop or a low average log-probability, unless it is silence."""
    too_repetitive = (
        options.compression_ratio_threshold is not None
        and result.compression_ratio > options.compression_ratio_threshold
    )
    unlikely = options.logprob_threshold is not None and result.avg_logprob < options.logprob_threshold
    silence = (
        options.no_speech_threshold is not None
        and result.no_speech_prob > options.no_speech_threshold
        and unlikely
    )
    return (too_repetitive or unlikely) and not silence


def _is_silence(result: DecodingResult, options: TranscribeOptions) -> bool:
    """openai/whisper's rule: probably no speech, and the decoded text is not confidently speech either."""
    if options.no_speech_threshold is None or result.no_speech_prob <= options.no_speech_threshold:
        return False
    return options.logprob_threshold is None or result.avg_logprob <= options.logprob_threshold


def _split_by_timestamps(
    tokens: list[int], timestamp_begin: int, segment_size: int
) -> tuple[list[tuple[list[int], float, float | None]], int]:
    """Cut a window's tokens into (tokens, start, end) segments at consecutive timestamp pairs.

    Returns the segments (times relative to the window; end None: the window's end) and how many
    mel frames to advance: to the end of the last complete segment, or the whole window when the output
    ended with a lone timestamp (everything up to the window's end was transcribed) or had no pair.
    """
    is_ts = [t >= timestamp_begin for t in tokens]
    single_timestamp_ending = len(tokens) >= 2 and is_ts[-1] and not is_ts[-2]
    consecutive = [i + 1 for i in range(len(tokens) - 1) if is_ts[i] and is_ts[i + 1]]

    def seconds(token: int) -> float:
        return (token - timestamp_begin) * TIME_PRECISION

    if consecutive:
        slices = consecutive + ([len(tokens)] if single_timestamp_ending else [])
        pieces: list[tuple[list[int], float, float | None]] = []
        last = 0
        for current in slices:
            piece = tokens[last:current]
            pieces.append((piece, seconds(piece[0]), seconds(piece[-1])))
            last = current
        if single_timestamp_ending:
            return pieces, segment_size
        last_timestamp = tokens[last - 1] - timestamp_begin
        return pieces, last_timestamp * INPUT_STRIDE
    timestamps = [t for t in tokens if t >= timestamp_begin]
    end = None
    if timestamps and timestamps[-1] != timestamp_begin:
        end = seconds(timestamps[-1])
    return [(tokens, 0.0, end)], segment_size
