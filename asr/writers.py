"""Output formats for a transcript (a `TranscriptionResult`, or a live stream's): txt, srt, vtt, json, tsv.

The `format_*` functions are pure (result -> str). `write_result` writes each requested format with
`write_atomic`, so a reader never sees a half-written file, and writes the JSON last: when the JSON of a stem
exists, every other format requested with it in that run was written completely (see `write_result`).
`safe_output_stem` maps an input file's path relative to an input folder onto the output folder, refusing any
path that would land outside it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asr.errors import InvalidOptionError
from asr.results import Segment, Transcript

FORMATS: tuple[str, ...] = ("txt", "srt", "vtt", "json", "tsv")

# At most this many characters of the target's name go into its temp file's name: the temp name adds 14 bytes
# and a name may not exceed 255 bytes (48 characters are at most 192 bytes of UTF-8).
_TMP_NAME_CHARS = 48
# tempfile's random part of a name: 8 characters of this alphabet (tempfile._RandomNameSequence)
_TMP_RANDOM = re.compile(r"[a-z0-9_]{8}")


# --- pure formatting ----------------------------------------------------------------------------------------


def _milliseconds(seconds: float) -> int:
    """Whole milliseconds, never negative; a non-finite time (a bug upstream) becomes 0, not a crash."""
    if not math.isfinite(seconds) or seconds <= 0:
        return 0
    return round(seconds * 1000)


def format_timestamp(seconds: float, *, marker: str = ".") -> str:
    """`HH:MM:SS<marker>mmm`; hours grow past two digits instead of wrapping. SRT uses marker ","."""
    return _format_ms(_milliseconds(seconds), marker)


def _format_ms(ms: int, marker: str) -> str:
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{marker}{ms:03d}"


def _defuse_arrow(text: str) -> str:
    # "-->" inside cue text would be read as a timing line by SRT/VTT parsers. Repeat, because replacing
    # "--->" once leaves "-->" again.
    while "-->" in text:
        text = text.replace("-->", "->")
    return text


def _cue_text(text: str) -> str:
    """Cue text for SRT/VTT: stripped, no "-->", and no blank line (a blank line ends a cue)."""
    lines = (line.strip() for line in _defuse_arrow(text).splitlines())
    return "\n".join(line for line in lines if line)


@dataclass(frozen=True)
class SubtitleOptions:
    """How srt/vtt cues are cut from word timings (openai-whisper's options, with the same meaning). Without
    word timings, or with none of these set, a cue is a segment."""

    max_line_width: int | None = None  # characters in a line; with max_line_count, cues ignore segments
    max_line_count: int | None = None  # lines in a cue
    max_words_per_line: int | None = None  # words in a line (without max_line_width, cues keep segments)
    highlight_words: bool = False  # one cue per word, that word underlined

    def __post_init__(self) -> None:
        for name in ("max_line_width", "max_line_count", "max_words_per_line"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InvalidOptionError(f"--{name.replace('_', '-')} must be at least 1, got {value}")

    @property
    def active(self) -> bool:
        return any((self.max_line_width, self.max_line_count, self.max_words_per_line, self.highlight_words))


Cue = tuple[int, int, str]  # start and end in milliseconds, text


def _cues(result: Transcript, subtitles: SubtitleOptions | None = None, *, vtt: bool = False) -> list[Cue]:
    """The cues: one per segment with text, or (with word timings and `subtitles`) lines of words."""
    escape = _escape_vtt if vtt else (lambda text: text)
    if (
        subtitles is not None
        and subtitles.active
        and result.segments
        and result.segments[0].words is not None
    ):
        return _word_cues(result.segments, subtitles, escape)
    # Segments without text would make empty cues, which some players reject: skipped (json keeps them).
    return [
        (_milliseconds(seg.start), _end_ms(seg.start, seg.end), escape(text))
        for seg in result.segments
        if (text := _cue_text(seg.text))
    ]


def _end_ms(start: float, end: float) -> int:
    # A cue must not end before it starts.
    return max(_milliseconds(start), _milliseconds(end))


def _word_cues(segments: list[Segment], options: SubtitleOptions, escape: Callable[[str], str]) -> list[Cue]:
    """openai-whisper's subtitle cutting: words fill a line up to max_line_width characters (or
    max_words_per_line words), lines fill a cue up to max_line_count; a pause of over 3 s starts a new cue;
    unless both width and count are given, every segment starts a new cue."""
    keep_segments = options.max_line_count is None or options.max_line_width is None
    width = options.max_line_width or 1000
    per_line = options.max_words_per_line or 1000
    cues: list[list[tuple[str, float, float]]] = []  # per cue: (text with "\n" for line breaks, start, end)
    cue: list[tuple[str, float, float]] = []
    line_len, line_count = 0, 1
    last = next((s.words[0].start for s in segments if s.words), 0.0)
    for segment in segments:
        words = segment.words or []
        for begin in range(0, len(words), per_line):
            for i, word in enumerate(words[begin : begin + per_line]):
                text = _defuse_arrow(word.word).replace("\n", " ")
                long_pause = not keep_segments and word.start - last > 3.0
                has_room = line_len + len(text) <= width
                segment_break = i == 0 and bool(cue) and keep_segments
                if line_len > 0 and has_room and not long_pause and not segment_break:
                    line_len += len(text)
                else:
                    text = text.strip()
                    new_cue = bool(cue) and options.max_line_count is not None
                    if (
                        new_cue and (long_pause or line_count >= (options.max_line_count or 0))
                    ) or segment_break:
                        cues.append(cue)
                        cue, line_count = [], 1
                    elif line_len > 0:
                        line_count += 1
                        text = "\n" + text
                    line_len = len(text.strip())
                cue.append((text, word.start, word.end))
                last = word.start
    if cue:
        cues.append(cue)
    out: list[Cue] = []
    for cue in cues:
        start, end = _milliseconds(cue[0][1]), _end_ms(cue[0][1], cue[-1][2])
        texts = [escape(text) for text, _, _ in cue]
        if not options.highlight_words:
            out.append((start, end, "".join(texts)))
            continue
        previous = start
        for i, (_, word_start, word_end) in enumerate(cue):
            w_start, w_end = _milliseconds(word_start), _end_ms(word_start, word_end)
            if previous != w_start:
                out.append((previous, w_start, "".join(texts)))
            marked = [
                re.sub(r"^(\s*)(.*)$", r"\1<u>\2</u>", t, flags=re.S) if j == i else t
                for j, t in enumerate(texts)
            ]
            out.append((w_start, w_end, "".join(marked)))
            previous = w_end
    return [cue for cue in out if cue[2].strip()]


def format_txt(result: Transcript) -> str:
    """The text, one stripped segment per line; `result.text` when there are no segments."""
    if result.segments:
        lines = [text for seg in result.segments if (text := seg.text.strip())]
    else:
        lines = [result.text.strip()] if result.text.strip() else []
    return "".join(line + "\n" for line in lines)


def format_srt(result: Transcript, subtitles: SubtitleOptions | None = None) -> str:
    """SubRip: 1-based cue numbers, `HH:MM:SS,mmm --> HH:MM:SS,mmm`, a blank line after each cue."""
    blocks = []
    for index, (start, end, text) in enumerate(_cues(result, subtitles), start=1):
        blocks.append(f"{index}\n{_format_ms(start, ',')} --> {_format_ms(end, ',')}\n{text}\n")
    return "\n".join(blocks)


def _escape_vtt(text: str) -> str:
    # WebVTT cue text treats "&" and "<" as markup (W3C WebVTT, "cue text"); escaping them also defuses "-->".
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def format_vtt(result: Transcript, subtitles: SubtitleOptions | None = None) -> str:
    """WebVTT: the `WEBVTT` header, then `HH:MM:SS.mmm --> HH:MM:SS.mmm` cues; `&`, `<`, `>` are escaped
    (the `<u>` of highlighted words is markup)."""
    blocks = ["WEBVTT\n"]
    for start, end, text in _cues(result, subtitles, vtt=True):
        blocks.append(f"{_format_ms(start, '.')} --> {_format_ms(end, '.')}\n{text}\n")
    return "\n".join(blocks)


def format_tsv(result: Transcript) -> str:
    """`start<TAB>end<TAB>text` with times in integer milliseconds, one row per segment that has text."""
    rows = ["start\tend\ttext\n"]
    for seg in result.segments:
        text = " ".join(_defuse_arrow(seg.text).split())  # tabs and line breaks would break the columns
        if text:
            rows.append(f"{_milliseconds(seg.start)}\t{_end_ms(seg.start, seg.end)}\t{text}\n")
    return "".join(rows)


def _jsonable(value: Any) -> Any:
    """`value` with non-finite floats as null (JSON has no NaN/Infinity), numpy/torch scalars as numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # numpy / torch scalars and arrays, without importing either
        return _jsonable(value.tolist())
    return value  # json.dumps raises TypeError for anything else: a bug to fix where the value is made


def format_json(result: Transcript) -> str:
    """`result.to_dict()` as indented UTF-8 JSON; NaN and infinities are written as null."""
    return json.dumps(_jsonable(result.to_dict()), ensure_ascii=False, indent=2, allow_nan=False) + "\n"


_FORMATTERS: dict[str, Callable[[Transcript], str]] = {
    "txt": format_txt,
    "srt": format_srt,
    "vtt": format_vtt,
    "json": format_json,
    "tsv": format_tsv,
}


# --- choosing formats and paths -----------------------------------------------------------------------------


def resolve_formats(fmt: str) -> tuple[str, ...]:
    """`"all"`, one format name, or a comma-separated list of them (case-insensitive) -> format names.

    The names keep the order given, without repeats. Raises `InvalidOptionError` for anything else.
    """
    allowed = f"allowed: {', '.join(FORMATS)}, all, or a comma-separated list such as 'srt,json'"
    if not isinstance(fmt, str):
        raise InvalidOptionError(f"output format must be a string, got {type(fmt).__name__}; {allowed}")
    names: list[str] = []
    for raw in fmt.split(","):
        name = raw.strip().lower()
        if name == "all":
            names.extend(FORMATS)
        elif name in FORMATS:
            names.append(name)
        else:
            raise InvalidOptionError(f"unknown output format {raw.strip()!r} in {fmt!r}; {allowed}")
    return tuple(dict.fromkeys(names))


def output_paths(stem: Path, formats: Iterable[str] | str) -> dict[str, Path]:
    """`{fmt: stem.fmt}`; the extension is appended, so a dotted stem like `talk.v2` keeps its dot."""
    if isinstance(formats, str):
        formats = resolve_formats(formats)
    stem = Path(stem)
    paths = {}
    for fmt in formats:
        if fmt not in FORMATS:
            raise InvalidOptionError(f"unknown output format {fmt!r}; allowed: {', '.join(FORMATS)}")
        paths[fmt] = stem.with_name(f"{stem.name}.{fmt}")
    return paths


def safe_output_stem(output_dir: Path, relative: Path) -> Path:
    """`output_dir / relative` without its suffix, resolved; it must lie strictly inside `output_dir`.

    Used to mirror an input folder tree: `a/b/c.wav` -> `<output_dir>/a/b/c`. Absolute paths, `..` that climbs
    out, and symlinks (already on disk) that lead out are refused with `InvalidOptionError`.
    """
    relative = Path(relative)
    problem = (
        f"output path for {str(relative)!r} would fall outside the output folder {str(output_dir)!r}; "
        "allowed: a relative path inside the input folder, such as 'sub/talk.wav'"
    )
    # `base / "/etc/passwd"` is "/etc/passwd", and on Windows a drive ("C:x") switches drives: refuse both.
    if relative.is_absolute() or relative.anchor or relative.name in ("", ".", ".."):
        raise InvalidOptionError(problem)
    try:
        base = Path(output_dir).resolve()
        stem = (base / relative.with_suffix("")).resolve()
    except (OSError, ValueError, RuntimeError) as exc:  # a NUL byte, a symlink loop, an unreadable folder
        raise InvalidOptionError(f"{problem} ({exc})") from exc
    if stem == base or not stem.is_relative_to(base):
        raise InvalidOptionError(problem)
    return stem


# --- writing ------------------------------------------------------------------------------------------------


def _new_file_mode(path: Path) -> int:
    """The mode `path` would get from a plain `open(path, "w")`: its current one, else 0o666 less the umask.

    NamedTemporaryFile creates 0o600 files; without this every output would be readable by its owner only.
    """
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        pass
    try:  # reading the umask from /proc avoids os.umask(), which changes it process-wide for a moment
        with open("/proc/self/status", encoding="ascii") as status:
            umask = next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable on POSIX; some platforms and file systems cannot open or sync a folder,
    # and there the file's own fsync is all we can do.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _tmp_prefix(path: Path) -> str:
    return f".{path.name[:_TMP_NAME_CHARS]}."


def remove_stale_temp_files(paths: Iterable[Path]) -> list[Path]:
    """Remove the temp files `write_atomic` left beside these output paths; return what was removed.

    `write_atomic` removes its temp file on any error, but not when the process is killed (kill -9, power
    loss) between creating and renaming it: `.talk.txt.k3j_x9q2.tmp` would stay forever (issue #19). Call
    this when a run starts on an output folder. Only names `write_atomic` makes for exactly these paths
    are touched; each folder is listed once. Not for two runs writing the same outputs at the same time.
    """
    wanted: dict[Path, set[str]] = {}
    for path in paths:
        wanted.setdefault(Path(path).parent, set()).add(_tmp_prefix(Path(path)))
    removed: list[Path] = []
    for folder, prefixes in wanted.items():
        try:
            names = os.listdir(folder)
        except OSError:  # not created yet, or unreadable: nothing of ours to find
            continue
        for name in names:
            if not (name.startswith(".") and name.endswith(".tmp")):
                continue
            prefix, _, random = name[: -len(".tmp")].rpartition(".")
            if prefix + "." in prefixes and _TMP_RANDOM.fullmatch(random):
                with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                    (folder / name).unlink()
                    removed.append(folder / name)
    return removed


def write_atomic(path: Path, text: str) -> None:
    """Write `text` (UTF-8, newlines as given) to `path`; readers see the old file or the new, never half.

    The text goes to a temp file beside `path`, is flushed and fsynced, then renamed over `path`. On any error
    the temp file is removed and the error re-raised; `path` is left as it was. Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _new_file_mode(path)
    tmp = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed below, and must outlive the `with` for the rename
        "w",
        encoding="utf-8",
        newline="",
        delete=False,
        dir=path.parent,
        prefix=_tmp_prefix(path),
        suffix=".tmp",
    )
    tmp_path = Path(tmp.name)
    try:
        with tmp:
            tmp.write(text)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp_path, mode)
        os.replace(tmp_path, path)
    except BaseException:  # KeyboardInterrupt too: never leave a temp file behind
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise
    _fsync_dir(path.parent)


def write_result(
    result: Transcript, stem: Path, formats: Iterable[str] | str, subtitles: SubtitleOptions | None = None
) -> list[Path]:
    """Write `result` as `stem.<fmt>` for each format, each atomically; return the paths in the order written.

    Completeness marker: the JSON is written last, and an existing JSON at this stem is removed before
    anything else is written. So if `stem.json` exists, every other requested format of the same run was
    written completely, and a batch can skip (or resume after) inputs whose JSON is there. Without "json" in
    `formats` there is no marker. Every format is rendered before any file is touched, so a formatting error
    writes nothing.
    """
    paths = output_paths(stem, formats)
    subtitle_formats = {"srt": format_srt, "vtt": format_vtt}
    texts = {
        fmt: subtitle_formats[fmt](result, subtitles) if fmt in subtitle_formats else _FORMATTERS[fmt](result)
        for fmt in paths
    }
    order = [fmt for fmt in paths if fmt != "json"] + (["json"] if "json" in paths else [])
    if "json" in paths:
        # A JSON from an earlier run would vouch for files this run may not finish rewriting.
        with contextlib.suppress(FileNotFoundError):
            paths["json"].unlink()
    written = []
    for fmt in order:
        write_atomic(paths[fmt], texts[fmt])
        written.append(paths[fmt])
    return written
