"""Transcribe whole recordings: 30-s windows, seeking by predicted timestamps, language detection.

Long-form follows openai/whisper's transcriber: the audio's log-mel is padded with 30 s of silence, each
window is decoded, complete segments (closed by a timestamp pair) are kept and the next window starts at
the last complete segment's end, so a word cut by a window edge is decoded again whole in the next
window rather than lost or repeated. Without timestamps, windows are simply consecutive.

Results stream (the idea of faster-whisper's transcribe): `transcribe_stream` yields segments as each
window is decoded, so the CLI and the app can show progress; `transcribe` collects them.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from .audio import (
    HOP_LENGTH,
    N_FRAMES,
    N_SAMPLES,
    SAMPLE_RATE,
    TIME_PRECISION,
    LogMelWindows,
)
from .audio_io import DEFAULT_MAX_DURATION_S, AudioSource, stream_audio
from .decoding import DecodingOptions, DecodingResult, DecodingTask, detect_language
from .drafting import Drafter, make_drafter
from .errors import InvalidOptionError
from .model import CrossKV
from .models import LoadedModel
from .results import Segment, TranscriptionResult
from .speculative import DraftLength, PassCosts

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
    stats: dict[str, Any] = field(default_factory=dict)
    window_tokens: list[list[int]] = field(default_factory=list)  # every decoded window's tokens


@dataclass(frozen=True)
class TranscribeOptions:
    """Long-form behaviour around per-window decoding."""

    condition_on_previous_text: bool = True  # prompt each window with the text so far
    no_speech_threshold: float | None = 0.6  # skip a window whose P(no speech) is above this...
    logprob_threshold: float | None = -1.0  # ...unless its average log-probability is above this
    max_duration_s: float | None = DEFAULT_MAX_DURATION_S
    compare: bool = False  # also run the plain target on the same input: measured speedup, identity check


def transcribe(
    model: LoadedModel,
    audio: str | os.PathLike | bytes | np.ndarray,
    options: DecodingOptions | None = None,
    transcribe_options: TranscribeOptions | None = None,
    **option_overrides: Any,
) -> TranscriptionResult:
    """Transcribe one recording (path, encoded bytes, or float samples at 16 kHz) to text and segments.

    Keyword overrides set DecodingOptions fields, e.g. `transcribe(model, "a.wav", language="de")`.
    """
    info, segments = transcribe_stream(model, audio, options, transcribe_options, **option_overrides)
    collected = list(segments)
    return TranscriptionResult(
        text="".join(s.text for s in collected).strip(),
        language=info.language,
        segments=collected,
        duration_s=info.duration_s,
        stats=info.stats,
    )


def transcribe_stream(
    model: LoadedModel,
    audio: str | os.PathLike | bytes | np.ndarray | LogMelWindows,
    options: DecodingOptions | None = None,
    transcribe_options: TranscribeOptions | None = None,
    **option_overrides: Any,
) -> tuple[TranscriptionInfo, Iterator[Segment]]:
    """Like `transcribe`, but returns at once with the info and an iterator producing segments."""
    options = replace(options or DecodingOptions(), **option_overrides)
    transcribe_options = transcribe_options or TranscribeOptions()
    tokenizer = model.tokenizer
    if options.language is not None and options.language not in tokenizer.languages:
        raise InvalidOptionError(
            f"language {options.language!r} is not supported by {model.name!r}; "
            f"allowed: {', '.join(tokenizer.languages)}"
        )
    t_start = time.perf_counter()
    if isinstance(audio, LogMelWindows):  # --compare's plain run, on the log-mel of the run it serves
        mel, mel_s = audio, 0.0
    else:
        mel = _log_mel(model, audio, transcribe_options.max_duration_s)
        mel_s = mel.time_s
    load_s = time.perf_counter() - t_start  # decoding and the log-mel, interleaved
    drafter = make_drafter(options.draft, model, beam_search=options.beam_size is not None)
    reference = None
    if transcribe_options.compare and drafter.name != "none":
        # The plain target on the same samples, first and to completion: the figures compare against it.
        # Its step is timed (and so warmed) before: a cold process's first passes must not slow the run
        # speculation is measured against.
        single_pass_time(model, n_rows=options.beam_size or 1)
        reference, plain_segments = transcribe_stream(
            model, mel, replace(options, draft="none"), replace(transcribe_options, compare=False)
        )
        for _ in plain_segments:
            pass
    t_loaded = time.perf_counter()
    t_start = t_loaded - load_s  # this run's clock: the one audio load, then its own work
    duration_s = mel.n_samples / SAMPLE_RATE

    stats: dict[str, Any] = {
        "target": model.name,
        "draft": drafter.name,
        "draft_step": drafter.step,
        "draft_k": options.draft_k if options.draft_k is not None else "adaptive",
        "beam_size": options.beam_size,
        "device": str(model.device),
        "dtype": str(model.dtype).removeprefix("torch."),
        "n_windows": 0,
        "n_silent_windows": 0,
        "n_tokens": 0,
        "proposed": 0,
        "accepted": 0,
        "accepted_length_histogram": {},
        "target_passes": 0,
        "beam_steps": 0,
        "draft_passes": 0,
        "fallback_windows": 0,
        "time_s": {
            "load_audio": t_loaded - t_start - mel_s,
            "mel": mel_s,
            "encoder": 0.0,
            "cross_kv": 0.0,
            "draft": 0.0,
            "target": 0.0,
            "decode": 0.0,
        },
    }
    first_window = None  # the first window's encoding and cross-attention projection, if detection made them
    language, language_probability = options.language, 1.0
    if language is None:
        if tokenizer.multilingual:
            features = _encode(model, mel.window(0), stats)
            start = time.perf_counter()
            with torch.inference_mode():
                cross = model.model.decoder.project_audio(features)
            stats["time_s"]["cross_kv"] += time.perf_counter() - start
            first_window = (features, cross)
            language, probs = detect_language(model, features, cross)
            language_probability = probs[language]
        else:
            language = "en"
    info = TranscriptionInfo(language, language_probability, duration_s, stats)
    window_options = replace(options, language=language)
    segments = _segments(
        model,
        mel,
        window_options,
        transcribe_options,
        info,
        first_window,
        t_start,
        drafter,
        reference,
    )
    return info, segments


def _log_mel(model: LoadedModel, audio: AudioSource, max_duration_s: float | None) -> LogMelWindows:
    """The log-mel of the whole input plus 30 s of silence, made as the audio is decoded: memory holds the
    log-mel (0.46 GB for 4 h with 80 mels), never all the samples or a whole-input STFT (issue #19)."""
    mel = LogMelWindows(model.dims.n_mels, padding=N_SAMPLES, device=model.device)
    for block in stream_audio(audio, max_duration_s=max_duration_s):
        mel.add(block)
    return mel.finish()


def _encode(model: LoadedModel, mel_window: torch.Tensor, stats: dict[str, Any]) -> torch.Tensor:
    start = time.perf_counter()
    with torch.inference_mode():
        features = model.model.encoder(mel_window.unsqueeze(0).to(model.dtype))
    stats["time_s"]["encoder"] += time.perf_counter() - start
    return features


def _segments(
    model: LoadedModel,
    mel: LogMelWindows,
    options: DecodingOptions,
    transcribe_options: TranscribeOptions,
    info: TranscriptionInfo,
    first_window: tuple[torch.Tensor, CrossKV] | None,
    t_start: float,
    drafter: Drafter,
    reference: TranscriptionInfo | None,
) -> Iterator[Segment]:
    tokenizer = model.tokenizer
    stats = info.stats
    content_frames = mel.n_frames - N_FRAMES
    seek = 0
    all_tokens: list[int] = []
    costs = pass_costs(model, drafter.name, options.beam_size) if options.beam_size is not None else None
    next_id = 0
    while seek < content_frames:
        time_offset = seek * HOP_LENGTH / SAMPLE_RATE
        segment_size = min(N_FRAMES, content_frames - seek)
        segment_duration = segment_size * HOP_LENGTH / SAMPLE_RATE
        if mel.peak(seek, segment_size) < SILENCE_PEAK:
            stats["n_silent_windows"] += 1
            seek += segment_size
            continue
        mel_window = mel.window(seek, N_FRAMES)
        cross = None
        if seek == 0 and first_window is not None:
            features, cross = first_window
        else:
            features = _encode(model, mel_window, stats)
        previous = all_tokens if transcribe_options.condition_on_previous_text else None
        task = DecodingTask(model, options, options.language, previous)
        result = task.run(features, mel_window, drafter, DraftLength(options.draft_k, costs), cross)
        _add_decoding_stats(stats, result)
        info.window_tokens.append(result.tokens)

        if _is_silence(result, transcribe_options):
            seek += segment_size
            continue
        pieces, seek_frames = _split_by_timestamps(result.tokens, tokenizer.timestamp_begin, segment_size)
        seek += max(seek_frames, 1)
        window_end = time_offset + segment_duration
        drafted = result.loop.drafted  # aligned with result.tokens
        offset = 0  # pieces are consecutive slices of the window's tokens
        for piece_tokens, start_rel, end_rel in pieces:
            piece_drafted = drafted[offset : offset + len(piece_tokens)]
            offset += len(piece_tokens)
            text = tokenizer.decode(piece_tokens)
            all_tokens.extend(piece_tokens)
            if not text.strip():
                continue
            start = time_offset + start_rel
            end = time_offset + (end_rel if end_rel is not None else segment_duration)
            yield Segment(
                id=next_id,
                start=round(min(start, window_end), 3),
                end=round(min(max(end, start), window_end), 3),
                text=text,
                tokens=piece_tokens,
                avg_logprob=result.avg_logprob,
                no_speech_prob=result.no_speech_prob,
                drafted=piece_drafted,
            )
            next_id += 1
    _finish_stats(model, info, t_start, reference)


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


def _add_decoding_stats(stats: dict[str, Any], result: DecodingResult) -> None:
    loop = result.loop
    stats["n_windows"] += 1
    stats["n_tokens"] += len(result.tokens)
    stats["target_passes"] += loop.n_target_passes
    stats["beam_steps"] += loop.n_beam_steps
    stats["draft_passes"] += loop.n_draft_passes
    stats["proposed"] += loop.n_proposed
    stats["accepted"] += loop.n_accepted
    stats["fallback_windows"] += int(loop.fell_back)
    histogram = stats["accepted_length_histogram"]
    for length, count in loop.accepted_lengths.items():
        histogram[str(length)] = histogram.get(str(length), 0) + count
    times = stats["time_s"]
    times["decode"] += result.decode_time_s
    times["cross_kv"] += loop.cross_kv_time_s
    times["draft"] += loop.draft_time_s
    times["target"] += loop.target_time_s


SHARED_STAGES = ("mel", "encoder", "cross_kv")  # the same work with or without a draft


def _finish_stats(
    model: LoadedModel, info: TranscriptionInfo, t_start: float, reference: TranscriptionInfo | None
) -> None:
    """Derived figures. The speedup is always labelled: "measured" against a plain run of the same input
    (--compare), else "estimated" from this machine's single-token target pass time."""
    stats = info.stats
    times = stats["time_s"]
    times["total"] = time.perf_counter() - t_start
    decode = times["decode"]
    stats["accepted_length_histogram"] = dict(
        sorted(stats["accepted_length_histogram"].items(), key=lambda kv: int(kv[0]))
    )
    stats["acceptance_rate"] = stats["accepted"] / stats["proposed"] if stats["proposed"] else None
    stats["tokens_per_target_pass"] = stats["n_tokens"] / max(stats["target_passes"], 1)
    if stats["beam_size"] is not None:
        stats["beam_steps_per_target_pass"] = stats["beam_steps"] / max(stats["target_passes"], 1)
    stats["tokens_per_s"] = stats["n_tokens"] / decode if decode > 0 else 0.0
    stats["realtime_factor"] = times["total"] / info.duration_s if info.duration_s > 0 else 0.0
    if reference is not None:
        plain = reference.stats
        stats["speedup"] = plain["time_s"]["decode"] / decode if decode > 0 else None
        # End to end from samples in memory (the audio was loaded once, for both runs). The log-mel, the
        # encoder and the cross-attention projection are the same work in both runs: each counts at the
        # faster of its two timings, or the one-off set-up of a cold process's first calls (paid by the
        # plain run, which goes first) inflates the ratio.
        plain_total = plain["time_s"]["total"] - plain["time_s"]["load_audio"]
        spec_total = times["total"] - times["load_audio"]
        for stage in SHARED_STAGES:
            fastest = min(plain["time_s"][stage], times[stage])
            plain_total += fastest - plain["time_s"][stage]
            spec_total += fastest - times[stage]
        stats["speedup_end_to_end"] = plain_total / spec_total
        stats["speedup_kind"] = "measured"
        stats["speedup_basis"] = "decode phase, plain target / speculative, same input, same process"
        stats["identical_to_target"] = reference.window_tokens == info.window_tokens
        stats["plain"] = {k: plain[k] for k in ("target_passes", "tokens_per_s", "time_s")}
    elif stats["draft"] == "none":
        stats["speedup"] = 1.0
        stats["speedup_kind"] = "baseline"
        stats["speedup_basis"] = "plain target decoding"
        stats["identical_to_target"] = True
    else:
        beam_size = stats["beam_size"]
        step_s = single_pass_time(model, n_rows=beam_size or 1)
        # plain beam search makes one pass of B rows per step; greedy one pass per token, and one per EOT
        plain_passes = stats["beam_steps"] if beam_size else stats["n_tokens"] + stats["n_windows"]
        stats["speedup"] = plain_passes * step_s / decode if decode > 0 else None
        stats["speedup_kind"] = "estimated"
        stats["speedup_basis"] = (
            f"decode phase; plain estimated as {plain_passes} target passes x {step_s * 1000:.1f} ms "
            f"(one-token pass of {beam_size or 1} row(s) measured on this machine); use --compare to measure"
        )
        stats["identical_to_target"] = None


_PASS_COSTS: weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple[str, int], PassCosts]]
_PASS_COSTS = weakref.WeakKeyDictionary()


def pass_costs(model: LoadedModel, draft: str, beam_size: int) -> PassCosts:
    """Beam search: whether speculation pays with this draft is timed once per process and remembered
    (asr/speculative.py, PassCosts), so a batch of short files pays for the measurement once, not per file."""
    return _PASS_COSTS.setdefault(model.model, {}).setdefault((draft, beam_size), PassCosts())


_PASS_TIMES: weakref.WeakKeyDictionary[torch.nn.Module, dict[int, float]] = weakref.WeakKeyDictionary()


def single_pass_time(model: LoadedModel, n_rows: int = 1) -> float:
    """Median seconds of one single-token target pass of `n_rows` rows on this machine (measured once)."""
    known = _PASS_TIMES.setdefault(model.model, {})
    if n_rows not in known:
        decoder = model.model.decoder
        dims = model.dims
        with torch.inference_mode():
            features = torch.zeros(
                1, dims.n_audio_ctx, dims.n_audio_state, dtype=model.dtype, device=model.device
            )
            cache = decoder.new_cache(features, n_batch=n_rows)
            prompt = torch.tensor([[model.tokenizer.sot] * 4] * n_rows, device=model.device)
            decoder(prompt, cache)
            token = torch.tensor([[model.tokenizer.sot]] * n_rows, device=model.device)
            times = []
            for _ in range(7):
                cache.crop(4)
                start = time.perf_counter()
                decoder(token, cache)
                times.append(time.perf_counter() - start)
        known[n_rows] = sorted(times[2:])[2]  # the median of 5, after 2 warm-up passes
    return known[n_rows]
