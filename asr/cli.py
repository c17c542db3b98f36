"""The `asr` command: the only module in asr/ that prints.

stdout carries transcripts only; progress, per-file reports and figures go to stderr. Every failure is
one line, never a traceback (unless --verbose), and the exit status is non-zero if anything failed.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .figures import RunStats
    from .transcribe import Transcriber

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    from .bundled import BUNDLED, DEFAULT_MODEL
    from .writers import FORMATS

    parser = argparse.ArgumentParser(prog="asr", description="Offline Whisper transcription.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details and show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)

    tr = commands.add_parser(
        "transcribe",
        help="transcribe audio files or folders",
        description="Transcribe audio files, or every audio file under folders. The transcript of a single "
        "file goes to stdout; with --output-dir each input also gets output files, named after it.",
    )
    tr.add_argument("paths", nargs="+", type=Path, help="audio files and/or folders")
    tr.add_argument("--model", default=DEFAULT_MODEL, help=f"bundled ({', '.join(BUNDLED)}), HF id or dir")
    tr.add_argument("--language", default=None, help="language code, e.g. en, de (default: detect)")
    tr.add_argument("--task", default="transcribe", choices=("transcribe", "translate"))
    tr.add_argument("--output-dir", type=Path, default=None, help="write output files here (mirrors folders)")
    tr.add_argument(
        "--format", default="all", help=f"output formats: {', '.join(FORMATS)}, a comma list, or all"
    )
    tr.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    tr.add_argument("--overwrite", action="store_true", help="redo files whose outputs already exist")
    tr.add_argument("--no-timestamps", action="store_true", help="decode without timestamp tokens")
    tr.add_argument(
        "--word-timestamps",
        action="store_true",
        help="each word's start, end and probability (JSON segments[].words), from the cross-attention",
    )
    vad = tr.add_argument_group("voice activity (decode only the speech Silero VAD finds)")
    vad.add_argument("--vad", action="store_true", help="skip what is not speech; times stay the input's")
    vad.add_argument("--vad-threshold", type=float, default=0.5, help="speech probability threshold (0.5)")
    vad.add_argument(
        "--vad-min-silence-ms", type=int, default=2000, help="pauses shorter than this do not split (2000)"
    )
    vad.add_argument(
        "--vad-speech-pad-ms", type=int, default=400, help="kept around each speech region (400)"
    )
    subtitles = tr.add_argument_group("subtitles from word timings (srt, vtt; with --word-timestamps)")
    subtitles.add_argument("--max-line-width", type=int, default=None, help="characters in a line")
    subtitles.add_argument("--max-line-count", type=int, default=None, help="lines in a cue")
    subtitles.add_argument("--max-words-per-line", type=int, default=None, help="words in a line")
    subtitles.add_argument(
        "--highlight-words", action="store_true", help="underline each word as it is spoken"
    )
    tr.add_argument(
        "--condition-on-previous-text",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="prompt each 30-s window with the text before it (default: on; dropped after a window "
        "decoded above temperature 0.5)",
    )
    tr.add_argument(
        "--initial-prompt", default=None, help="text to prompt the first window with (names, spellings)"
    )
    tr.add_argument(
        "--temperature",
        default="0,0.2,0.4,0.6,0.8,1.0",
        help="a window's decoding temperature, or a comma list: decoded again at the next one when the "
        "result looks wrong (a repetition loop, or unlikely text); default 0,0.2,0.4,0.6,0.8,1.0; 0: no "
        "fallback",
    )
    tr.add_argument("--best-of", type=int, default=5, help="samples per window above temperature 0 (5)")
    tr.add_argument(
        "--compression-ratio-threshold",
        default="2.4",
        help="fall back when the text's gzip compression ratio is above this (a loop); none: never",
    )
    tr.add_argument(
        "--logprob-threshold",
        default="-1.0",
        help="fall back when the average log-probability is below this; none: never",
    )
    tr.add_argument(
        "--no-speech-threshold",
        default="0.6",
        help="a window is silence when P(no speech) is above this and the text is unlikely; none: never",
    )
    tr.add_argument("--seed", type=int, default=0, help="sampling seed: a run is reproducible (0)")
    tr.add_argument(
        "--draft",
        default="self",
        help="speculative draft: self (a cheap copy of the model, default), none (plain decoding), or a "
        "model name with the same tokenizer",
    )
    tr.add_argument("--draft-k", type=int, default=None, help="tokens proposed per pass (default: adaptive)")
    tr.add_argument(
        "--compare",
        action="store_true",
        help="also run the model alone on each input: measured speedup and a check of identical output",
    )
    tr.add_argument(
        "--beam-size", type=int, default=None, help="beam search with this many beams (default: greedy)"
    )
    tr.add_argument("--patience", type=float, default=None, help="beam search patience (default 1.0)")
    tr.add_argument(
        "--length-penalty", type=float, default=None, help="beam ranking length penalty alpha in [0, 1]"
    )
    tr.add_argument("--max-duration", type=float, default=None, help="refuse audio longer than this (s)")
    tr.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: all cores)")
    tr.add_argument(
        "--server",
        default="auto",
        choices=("auto", "off"),
        help="auto: run on the `asr serve` server when one is running (same output), else here; off: here",
    )

    live = commands.add_parser(
        "stream",
        help="live captions: replay a file as if it were a live source",
        description="Replay an audio file as a live source and print committed text as it comes: the buffer "
        "is decoded again every --update-s seconds and text is committed where two consecutive updates "
        "agree; the previous update's text is the draft. --json: one JSON object per line.",
    )
    live.add_argument("path", type=Path, help="an audio file")
    live.add_argument("--model", default=DEFAULT_MODEL, help=f"bundled ({', '.join(BUNDLED)}), HF id or dir")
    live.add_argument("--language", default=None, help="language code, e.g. en, de (default: detect)")
    live.add_argument("--task", default="transcribe", choices=("transcribe", "translate"))
    live.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    live.add_argument("--draft", default="self", help="draft beyond the previous update's text: self or none")
    live.add_argument(
        "--no-hypothesis-draft",
        action="store_true",
        help="do not propose the previous update's text (with --draft none: plain decoding)",
    )
    live.add_argument("--update-s", type=float, default=1.0, help="decode again every this many seconds (1)")
    live.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="replay at this many times real time (1); 0: as fast as the CPU goes, timed on a simulated "
        "real-time clock",
    )
    live.add_argument("--json", action="store_true", help="one JSON object per line: commits, then final")
    live.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="also write the final transcript here, named after the file",
    )
    live.add_argument(
        "--format", default="all", help=f"output formats: {', '.join(FORMATS)}, a comma list, or all"
    )
    live.add_argument("--max-duration", type=float, default=None, help="refuse audio longer than this (s)")
    live.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: all cores)")

    commands.add_parser("models", help="list model names and whether each is available on this machine")

    serve = commands.add_parser(
        "serve",
        help="keep models loaded for `asr transcribe` (a local Unix socket)",
        description="A warm server: `asr transcribe` runs on it when it is running, with the same output. "
        "It listens on a Unix socket of the user's runtime directory (mode 0600), never on the network.",
    )
    action = serve.add_mutually_exclusive_group()
    action.add_argument("--stop", action="store_true", help="stop the running server (after its runs)")
    action.add_argument("--background", action="store_true", help="start it in the background and return")
    serve.add_argument(
        "--model",
        action="append",
        default=None,
        help=f"load this model at start (repeatable; default {DEFAULT_MODEL})",
    )
    serve.add_argument("--device", default="cpu", help="device of the models loaded at start (default: cpu)")
    serve.add_argument("--concurrency", type=int, default=1, help="transcriptions at a time (default 1)")
    serve.add_argument(
        "--idle-timeout",
        type=float,
        default=900.0,
        help="stop after this many idle seconds (0: never; default 900)",
    )
    return parser


@dataclass
class Job:
    """One input file and where its outputs go (None: stdout only)."""

    path: Path
    stem: Path | None


def main(argv: Sequence[str] | None = None, in_process: bool = False) -> int:
    """`asr ...`; `in_process`: never hand a transcription to a server (the server's own call)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="asr: %(message)s", stream=sys.stderr
    )
    try:
        if args.command == "models":
            return _models()
        if args.command == "serve":
            return _serve(args, argv)
        if args.command == "stream":
            return _stream(args)
        # --verbose shows tracebacks and details: this process's own (issue #22)
        if args.server == "auto" and not args.verbose and not in_process:
            from .client import transcribe_via_server

            code = transcribe_via_server(argv)
            if code is not None:
                return code
        return _transcribe(args)
    except KeyboardInterrupt:
        _err("interrupted; finished outputs are kept: run the same command again to resume")
        return EXIT_INTERRUPTED
    except Exception as exc:
        from .errors import AsrError, IncompatibleModelsError, InvalidOptionError, ModelNotFoundError

        if args.verbose:
            raise
        if isinstance(exc, AsrError | OSError):  # OSError: an output could not be written
            _err(f"error: {exc}")
            # an unknown --model or an unusable --draft is a bad option like any other (issue #19)
            bad_option = InvalidOptionError | ModelNotFoundError | IncompatibleModelsError
            return EXIT_USAGE if isinstance(exc, bad_option) else EXIT_FAILED
        _err(f"internal error: {type(exc).__name__}: {exc} (rerun with --verbose for details)")
        return EXIT_FAILED


def _err(message: str) -> None:
    print(_report_line(message), file=sys.stderr, flush=True)


def _report_line(message: str) -> str:
    """A line of ours on stderr: "asr: " and the message, escaped (every report line goes through here)."""
    return f"asr: {_escaped(message)}"


def _escaped(text: str) -> str:
    """`text` with control characters, backslashes and undecodable bytes written as escapes.

    A report line names files, and a file name can hold a newline: printed as is, it could forge a line of
    ours ("asr: ok ...") or hide one (issue #19). So every report line is escaped, as repr() would.
    """
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(ch if ch.isprintable() and ch != "\\" else repr(ch)[1:-1] for ch in text)


def _numbers(flag: str, text: str) -> tuple[float, ...]:
    """A comma list of numbers, e.g. "0,0.2,0.4"."""
    from .errors import InvalidOptionError

    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise InvalidOptionError(f"{flag} takes a number or a comma list of numbers, got {text!r}") from None
    if any(math.isnan(v) or math.isinf(v) for v in values):
        raise InvalidOptionError(f"{flag} takes finite numbers, got {text!r}")
    return values


def _threshold(flag: str, text: str) -> float | None:
    """A number, or none/off (the check disabled)."""
    from .errors import InvalidOptionError

    if text.strip().lower() in ("none", "off"):
        return None
    values = _numbers(flag, text)
    if len(values) != 1:
        raise InvalidOptionError(f"{flag} takes one number (or none), got {text!r}")
    return values[0]


def _models() -> int:
    from .models import list_models

    for info in list_models():
        mark = "available" if info.available else "missing"
        print(f"{info.name:34s} {info.kind:12s} {mark:10s} {info.detail}")
    return EXIT_OK


def _serve(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from . import serve
    from .bundled import DEFAULT_MODEL
    from .errors import InvalidOptionError

    if args.stop:
        return serve.stop()
    if args.concurrency < 1:
        raise InvalidOptionError(f"--concurrency must be >= 1, got {args.concurrency}")
    if args.idle_timeout < 0:
        raise InvalidOptionError(f"--idle-timeout must be >= 0 (0: never), got {args.idle_timeout}")
    if args.background:
        return serve.start_background([a for a in argv[argv.index("serve") + 1 :] if a != "--background"])
    return serve.run(args.model or [DEFAULT_MODEL], args.device, args.concurrency, args.idle_timeout)


def _stream(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from .audio_io import DEFAULT_MAX_DURATION_S, stream_audio
    from .decoding import DecodingOptions
    from .errors import InvalidOptionError
    from .live import LiveOptions, LiveStream, replay, replay_clock
    from .writers import resolve_formats, safe_output_stem, write_result

    formats = resolve_formats(args.format)
    if args.output_dir is not None:
        _check_output_dir(args.output_dir)
    _set_threads(args.threads)
    if not args.speed >= 0 or math.isinf(args.speed):
        raise InvalidOptionError(f"--speed must be >= 0 (0: as fast as possible), got {args.speed}")
    options = DecodingOptions(
        task=args.task, language=None if args.language in (None, "auto") else args.language, draft=args.draft
    )
    live = LiveOptions(update_s=args.update_s, hypothesis_draft=not args.no_hypothesis_draft)
    max_duration = args.max_duration if args.max_duration is not None else DEFAULT_MAX_DURATION_S
    samples = np.concatenate([np.zeros(0, np.float32), *stream_audio(args.path, max_duration_s=max_duration)])

    from .models import load_model

    model = load_model(args.model, device=args.device)
    stream = LiveStream(model, options, live, clock=replay_clock(args.speed))
    for commit in replay(stream, samples, speed=args.speed):
        if args.json:
            print(json.dumps(commit.to_dict(), ensure_ascii=False), flush=True)
        else:
            print(commit.text, end="", flush=True)
    stats = stream.stats.to_dict()
    if args.json:
        segments = [
            {"start": s.start, "end": s.end, "text": s.text, "tokens": s.tokens} for s in stream.segments()
        ]
        final = {"type": "final", "text": stream.text, "segments": segments, "stats": stats}
        print(json.dumps(final, ensure_ascii=False), flush=True)
    else:
        print(flush=True)
    if args.output_dir is not None:
        stem = safe_output_stem(args.output_dir, Path(args.path.stem + ".x"))
        for path in write_result(stream.result(), stem, formats):
            _err(f"wrote {path}")
    _err(
        f"{args.path}: {len(samples) / 16000:.1f} s of audio, {stats['updates']} updates "
        f"(mean {stats['update_time_mean_s'] or 0:.2f} s, max {stats['update_time_max_s']:.2f} s, "
        f"{stats['lagging_updates']} over {args.update_s:g} s); commit latency mean "
        f"{stats['latency_mean_s'] or 0:.2f} s, p95 {stats['latency_p95_s'] or 0:.2f} s; "
        f"{stats['target_passes']} target passes for {stats['tokens']} tokens (plain decoding: "
        f"{stats['plain_passes']}); accepted {stats['accepted_from_hypothesis']} from the previous text, "
        f"{stats['accepted_from_draft']} from the draft ({stream.drafter.name})"
    )
    return EXIT_OK


def _set_threads(threads: int | None) -> None:
    from .errors import InvalidOptionError

    if threads is not None:
        if threads < 1:
            raise InvalidOptionError(f"--threads must be >= 1, got {threads}")
        import torch

        torch.set_num_threads(threads)


def _transcribe(args: argparse.Namespace) -> int:
    from .audio_io import DEFAULT_MAX_DURATION_S
    from .decoding import DecodingOptions
    from .errors import InvalidOptionError
    from .transcribe import TranscribeOptions
    from .vad import VadOptions
    from .writers import SubtitleOptions, resolve_formats

    formats = resolve_formats(args.format)
    subtitles = SubtitleOptions(
        max_line_width=args.max_line_width,
        max_line_count=args.max_line_count,
        max_words_per_line=args.max_words_per_line,
        highlight_words=args.highlight_words,
    )
    if subtitles.active and not args.word_timestamps:
        raise InvalidOptionError(
            "--max-line-width, --max-line-count, --max-words-per-line and --highlight-words cut subtitles "
            "by word timings: add --word-timestamps"
        )
    _set_threads(args.threads)
    options = DecodingOptions(
        task=args.task,
        language=None if args.language in (None, "auto") else args.language,
        timestamps=not args.no_timestamps,
        draft=args.draft,
        draft_k=args.draft_k,
        beam_size=args.beam_size,
        patience=args.patience,
        length_penalty=args.length_penalty,
        best_of=args.best_of,
        seed=args.seed,
    )
    transcribe_options = TranscribeOptions(
        temperature=_numbers("--temperature", args.temperature),
        compression_ratio_threshold=_threshold(
            "--compression-ratio-threshold", args.compression_ratio_threshold
        ),
        logprob_threshold=_threshold("--logprob-threshold", args.logprob_threshold),
        no_speech_threshold=_threshold("--no-speech-threshold", args.no_speech_threshold),
        initial_prompt=args.initial_prompt,
        compare=args.compare,
        condition_on_previous_text=args.condition_on_previous_text,
        word_timestamps=args.word_timestamps,
        vad=VadOptions(args.vad_threshold, args.vad_min_silence_ms, args.vad_speech_pad_ms)
        if args.vad
        else None,
        max_duration_s=args.max_duration if args.max_duration is not None else DEFAULT_MAX_DURATION_S,
    )
    jobs, problems = _plan(args.paths, args.output_dir)
    # One input path that is not a folder, even a missing one: its problem must be reported, not a demand
    # for --output-dir.
    single = len(args.paths) == 1 and not args.paths[0].is_dir()
    if not single and args.output_dir is None:
        raise InvalidOptionError("--output-dir is required to transcribe a folder or several files")
    for path, reason in problems:
        _err(f"{path}: {reason}")
    if not jobs:
        if not problems:
            _err(f"{', '.join(str(p) for p in args.paths)}: no audio files found")
        return EXIT_FAILED

    from .models import load_model
    from .transcribe import Transcriber

    model = load_model(args.model, device=args.device)
    # the options against the model, and the draft (a bad or incompatible one): one error, before any file
    transcriber = Transcriber(model, options, transcribe_options)
    if args.output_dir is not None:
        # After the option checks (a typo creates no folder), before any decoding: a transcript that cannot
        # be written is work lost.
        _check_output_dir(args.output_dir)
        # A run killed during a write (kill -9) left temp files of ours behind (issue #19).
        from .writers import output_paths, remove_stale_temp_files

        stems = [job.stem for job in jobs if job.stem is not None]
        remove_stale_temp_files(path for stem in stems for path in output_paths(stem, formats).values())
    if single:
        return _run_single(transcriber, jobs[0], formats, args.overwrite, problems, subtitles)
    return _run_batch(transcriber, jobs, formats, args.overwrite, problems, subtitles)


def _check_output_dir(output_dir: Path) -> None:
    """Create `output_dir` and prove it writable by creating and removing a file in it.

    Permission bits are not the answer: root ignores them (CAP_DAC_OVERRIDE), a read-only mount or a full
    disk does not show in them. Issue #19: a batch used to transcribe every file, then fail every write.
    """
    from .errors import InvalidOptionError

    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InvalidOptionError(f"--output-dir {output_dir}: cannot create it ({reason})") from exc
    try:
        fd, probe = tempfile.mkstemp(dir=output_dir, prefix=".asr-write-check.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InvalidOptionError(f"--output-dir {output_dir}: cannot write there ({reason})") from exc


def _walk(folder: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Every entry under `folder` named like audio (sorted), and the subfolders that could not be read.

    Not only regular files: a FIFO, a socket or a broken or looping symlink named *.wav is an input that
    cannot be used, and is reported as one, not silently left out (issue #19). Symlinked folders are not
    followed (no loops).
    """
    from .audio_io import AUDIO_EXTENSIONS

    found: list[Path] = []
    unreadable: list[tuple[Path, str]] = []

    def on_error(error: OSError) -> None:
        where = Path(error.filename) if error.filename else folder
        unreadable.append((where, f"folder cannot be read ({error.strerror or type(error).__name__})"))

    # os.walk lists as files whatever is not a folder: FIFOs, sockets, broken and looping symlinks included.
    for root, _, files in os.walk(folder, onerror=on_error):
        found.extend(Path(root) / name for name in files if Path(name).suffix.lower() in AUDIO_EXTENSIONS)
    return sorted(found), unreadable


def _plan(paths: Sequence[Path], output_dir: Path | None) -> tuple[list[Job], list[tuple[Path, str]]]:
    """Expand folders into audio files and give each its output stem, mirrored under output_dir."""
    from .errors import InvalidOptionError
    from .writers import safe_output_stem

    found: list[tuple[Path, Path]] = []  # (file, path relative to its root)
    problems: list[tuple[Path, str]] = []
    for path in paths:
        if path.is_dir():
            files, unreadable = _walk(path)
            found.extend((f, f.relative_to(path)) for f in files)
            problems.extend(unreadable)
        elif path.exists() or path.is_symlink():
            found.append((path, Path(path.name)))
        else:
            problems.append((path, "no such file or directory"))
    jobs: list[Job] = []
    if output_dir is None:
        return [Job(f, None) for f, _ in found], problems
    stems: dict[Path, int] = {}
    for _, rel in found:
        stems[rel.with_suffix("")] = stems.get(rel.with_suffix(""), 0) + 1
    taken: set[Path] = set()
    for file, rel in found:
        # a.wav and a.flac side by side keep their suffix so neither overwrites the other's outputs; so does
        # "..wav", whose stem "." would name the output folder itself
        bare = rel.with_suffix("")
        unique = bare if stems[bare] == 1 and bare.name not in ("", ".", "..") else rel
        try:
            stem = safe_output_stem(output_dir, unique.with_name(unique.name + ".x"))
        except InvalidOptionError:
            # Only a symlink (or loop) already in output_dir leads out: one refused file must not stop the
            # batch, and the message must name the input, not the helper name "<stem>.x" given above.
            problems.append((file, f"its outputs would land outside {output_dir} (via a symlink?); skipped"))
            continue
        if stem in taken:
            problems.append((file, f"another input already writes to {stem}.*; skipped"))
            continue
        taken.add(stem)
        jobs.append(Job(file, stem))
    return jobs, problems


def _outputs_done(stem: Path, formats: Sequence[str]) -> bool:
    from .writers import output_paths

    return all(p.is_file() for p in output_paths(stem, formats).values())


def _summary_line(name: str, stats: RunStats, duration_s: float) -> str:
    times = stats.time_s
    line = (
        f"{name}: {duration_s:.1f} s of audio in {times.total:.2f} s "
        f"(encoder {times.encoder:.2f} s, decode {times.decode:.2f} s); "
        f"{stats.n_tokens} tokens, {stats.tokens_per_s:.0f} tokens/s; "
        f"target {stats.target} ({stats.dtype}, {stats.device}), draft {stats.draft}"
    )
    if stats.beam_size:
        line += f", beam search {stats.beam_size}"
    if not stats.has_draft:
        return line + _fallback_clause(stats, lead="; ").removesuffix("; ")
    rate = stats.acceptance_rate
    rate_text = f" ({rate:.0%})" if rate is not None else ""
    if stats.beam_size:
        line += (
            f" (k {stats.draft_k}): {stats.accepted}/{stats.proposed} drafted beam steps confirmed"
            f"{rate_text}, {stats.beam_steps_per_target_pass or 0.0:.1f} beam steps per target pass, "
        )
    else:
        line += (
            f" (k {stats.draft_k}): {stats.accepted}/{stats.proposed} proposed tokens accepted"
            f"{rate_text}, {stats.tokens_per_target_pass:.1f} tokens per target pass, "
        )
    native = "native " if stats.draft_step == "native" else ""
    line += (
        f"{stats.target_passes} target + {stats.draft_passes} {native}draft passes "
        f"(target {times.target:.2f} s, draft {times.draft:.2f} s); "
    )
    line += _fallback_clause(stats)
    if stats.speedup is None:
        return line + "speedup n/a (nothing decoded)"
    line += f"speedup {stats.speedup:.2f}x ({stats.speedup_kind}, decode phase"
    if stats.speedup_kind == "measured":
        if stats.identical_to_target is None:
            return line + f"; end to end {stats.speedup_end_to_end:.2f}x; rejection sampling: other samples)"
        identical = "identical" if stats.identical_to_target else "NOT IDENTICAL"
        return line + f"; end to end {stats.speedup_end_to_end:.2f}x; output {identical} to the model alone)"
    return line + "; --compare measures it)"


def _fallback_clause(stats: RunStats, lead: str = "") -> str:
    """The temperature fallback's part of a report line: how many windows were decoded again, and the draft's
    acceptance at each temperature above 0 ("" if none was)."""
    if not stats.windows_decoded_again and not stats.temperature_retries:
        return ""
    sampled = []
    for temperature, figures in stats.by_temperature.items():
        if float(temperature) > 0:
            rate = f", {figures.acceptance_rate:.0%} accepted" if figures.acceptance_rate is not None else ""
            sampled.append(f"T {temperature}: {figures.decodes}{rate}")
    failed = stats.windows_all_temperatures_failed
    failed_text = f", {failed} failing at every temperature" if failed else ""
    return (
        f"{lead}{stats.windows_decoded_again} of {stats.n_windows} windows decoded again{failed_text} "
        f"({'; '.join(sampled)}); "
    )


def _run_single(transcriber: Transcriber, job: Job, formats, overwrite, problems, subtitles=None) -> int:
    from .writers import write_result

    if job.stem is not None and not overwrite and _outputs_done(job.stem, formats):
        _err(f"{job.path}: outputs exist in {job.stem.parent} (use --overwrite to redo)")
        return EXIT_FAILED if problems else EXIT_OK
    result = transcriber.transcribe(job.path)
    print(result.text, flush=True)
    if job.stem is not None:
        write_result(result, job.stem, formats, subtitles)
    _err(_summary_line(str(job.path), result.stats, result.duration_s))
    return EXIT_FAILED if problems else EXIT_OK


def _run_batch(
    transcriber: Transcriber, jobs: list[Job], formats, overwrite, problems, subtitles=None
) -> int:
    from tqdm import tqdm

    from .audio_io import audio_duration
    from .errors import AsrError
    from .writers import write_result

    durations = {}
    for job in jobs:
        try:
            durations[job.path] = audio_duration(job.path)
        except AsrError:
            durations[job.path] = 0.0  # reported when its turn comes
    n_done = n_skipped = 0
    failed: list[tuple[Path, str]] = list(problems)
    started = time.perf_counter()
    # Total and updates are the same unrounded numbers added in the same order, so the bar ends at exactly
    # 100% (rounding each file's share made it overshoot: 101% and a TqdmWarning on stderr).
    bar = tqdm(
        total=sum(durations.values()), unit="s audio", unit_scale=True, file=sys.stderr, dynamic_ncols=True
    )
    with bar:
        for index, job in enumerate(jobs, 1):
            bar.set_postfix_str(f"file {index}/{len(jobs)}")
            assert job.stem is not None, "a batch always has --output-dir"
            if not overwrite and _outputs_done(job.stem, formats):
                n_skipped += 1
                bar.write(_report_line(f"skip {job.path}: outputs exist"), file=sys.stderr)
            else:
                try:
                    result = transcriber.transcribe(job.path)
                    write_result(result, job.stem, formats, subtitles)
                    n_done += 1
                    summary = _summary_line(str(job.path), result.stats, result.duration_s)
                    bar.write(_report_line(f"ok {summary}"), file=sys.stderr)
                except (AsrError, OSError) as exc:  # OSError: its outputs could not be written
                    failed.append((job.path, str(exc)))
                    bar.write(_report_line(f"FAILED {_named(job.path, str(exc))}"), file=sys.stderr)
                except Exception as exc:  # one broken file must not stop the batch
                    reason = f"internal error: {type(exc).__name__}: {exc}"
                    failed.append((job.path, reason))
                    bar.write(_report_line(f"FAILED {_named(job.path, reason)}"), file=sys.stderr)
            bar.update(durations[job.path])
    elapsed = time.perf_counter() - started
    _err(
        f"{len(jobs) + len(problems)} files: {n_done} transcribed, {n_skipped} skipped (outputs exist), "
        f"{len(failed)} failed; {sum(durations.values()):.1f} s of audio in {elapsed:.1f} s"
    )
    for path, reason in failed:
        _err(f"failed: {_named(path, reason)}")
    return EXIT_FAILED if failed else EXIT_OK


def _named(path: Path, reason: str) -> str:
    """`reason` prefixed with the file's name unless it already starts with it (AudioLoadError's do)."""
    return reason if reason.startswith(str(path)) else f"{path}: {reason}"


if __name__ == "__main__":
    sys.exit(main())
