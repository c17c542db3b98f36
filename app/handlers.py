"""What the page does when Transcribe is clicked, as plain functions (tested without a browser or server).

`transcribe_audio` checks the input, runs the engine (models load once, lazily, and are shared by every
request: `asr.models.load_model` caches them), and renders the outputs. Every problem the user can cause or
fix reaches the page as a `gr.Error` with one plain line; anything else is logged here with its traceback
and reaches the page as one line too, so the server keeps serving and the user never sees a traceback.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import gradio as gr
from matplotlib.figure import Figure

from asr.audio_io import audio_duration
from asr.decoding import DecodingOptions
from asr.errors import AsrError
from asr.models import DEFAULT_MODEL, LoadedModel, list_models, load_model
from asr.results import Transcript, TranscriptionResult
from asr.transcribe import DEFAULT_TEMPERATURES, TranscribeOptions, transcribe
from asr.vad import VadOptions
from asr.writers import write_result

from . import render

logger = logging.getLogger("asr.app")

DOWNLOAD_FORMATS = ("txt", "srt", "vtt", "json")
OUTPUT_MAX_AGE_S = 3600  # download folders older than this are removed when a later request comes
GREEDY, BEAM = "greedy", "beam search"
# The fallback schedule as the page shows it (and the CLI's --temperature takes it): "0, 0.2, ..., 1".
DEFAULT_TEMPERATURE_TEXT = ", ".join(f"{t:g}" for t in DEFAULT_TEMPERATURES)
AUTO_LANGUAGE = "auto"
# Offered in the language menu (any other code can be typed in; the model says which it knows).
COMMON_LANGUAGES = (
    ("English", "en"),
    ("German", "de"),
    ("French", "fr"),
    ("Spanish", "es"),
    ("Italian", "it"),
    ("Portuguese", "pt"),
    ("Dutch", "nl"),
    ("Polish", "pl"),
    ("Russian", "ru"),
    ("Ukrainian", "uk"),
    ("Turkish", "tr"),
    ("Arabic", "ar"),
    ("Hindi", "hi"),
    ("Chinese", "zh"),
    ("Japanese", "ja"),
    ("Korean", "ko"),
)


@dataclass(frozen=True)
class AppSettings:
    """Server-side limits and where the app runs; the CLI flags of `python -m app` set them."""

    max_upload_mb: float = 50.0  # uploads larger than this are refused (Gradio also stops them at upload)
    max_duration_s: float = 600.0  # audio longer than this is refused before decoding
    device: str = "cpu"
    concurrency_limit: int = 1  # transcriptions running at once (each uses every CPU core already)
    max_queue: int = 20  # requests waiting beyond this are turned away with a message

    def __post_init__(self) -> None:
        for name in ("max_upload_mb", "max_duration_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if self.concurrency_limit < 1 or self.max_queue < 1:
            raise ValueError("concurrency_limit and max_queue must be at least 1")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


class Outputs(NamedTuple):
    """What one transcription shows, in the order of the page's output components."""

    transcript: str
    figures: str  # HTML: headline figures and time per stage
    speculation: str  # HTML: every token coloured by who wrote it
    plot: Figure  # tokens per target pass
    segments: str  # HTML: segment times (empty without timestamps)
    files: list[str]  # txt, srt, vtt, json to download


def model_choices() -> list[str]:
    """Models available here without a download: the bundled ones, and Hugging Face ids already cached."""
    names = [info.name for info in list_models() if info.available]
    return names or [DEFAULT_MODEL]


def draft_choices(models: list[str]) -> list[str]:
    return ["self", "none", *models]


def language_choices() -> list[tuple[str, str]]:
    return [("auto (detect)", AUTO_LANGUAGE)] + [
        (f"{name} ({code})", code) for name, code in COMMON_LANGUAGES
    ]


def _fail(message: str) -> gr.Error:
    # print_exception=False: a bad input is not a server problem; its traceback would only clutter the log.
    return gr.Error(message, print_exception=False)


def _display_name(path: Path) -> str:
    return path.name or "the recording"


def _minutes(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _check_file(audio: str | Path | None, settings: AppSettings) -> Path:
    """The uploaded or recorded file, or a gr.Error saying what is wrong with it."""
    if audio is None or (isinstance(audio, str) and not audio.strip()):
        raise _fail("No audio: upload a file or record from the microphone first.")
    path = Path(audio)
    try:
        size = path.stat().st_size
    except OSError:
        raise _fail(f"{_display_name(path)}: the upload is gone; please upload it again.") from None
    if size == 0:
        raise _fail(f"{_display_name(path)}: the file is empty (0 bytes).")
    if size > settings.max_upload_bytes:
        raise _fail(
            f"{_display_name(path)}: the file is {size / 1024 / 1024:.1f} MB; "
            f"the limit is {settings.max_upload_mb:g} MB."
        )
    return path


def _whole_number(value: float | None, what: str) -> int:
    if value is None or not float(value).is_integer():
        raise _fail(f"{what} must be a whole number, got {value!r}.")
    return int(value)


def decoding_options(
    draft: str,
    decoding: str,
    beam_size: float | None,
    language: str | None,
    task: str,
    timestamps: bool,
    best_of: float | None = 5,
    seed: float | None = 0,
) -> DecodingOptions:
    """The page's choices as engine options (raises InvalidOptionError for a bad combination).

    Greedy or beam search decodes at temperature 0; `best_of` samples are drawn at each higher one.
    """
    if decoding not in (GREEDY, BEAM):
        raise _fail(f"Unknown decoding {decoding!r}; choose {GREEDY!r} or {BEAM!r}.")
    beam = _whole_number(beam_size, "Beam size") if decoding == BEAM else None
    code = (language or AUTO_LANGUAGE).strip().lower()
    # The menu's labels are "German (de)"; a typed label or code both work.
    code = match.group(1) if (match := re.fullmatch(r".*\((\w+)\)", code)) else code
    return DecodingOptions(
        task=task,
        language=None if code in (AUTO_LANGUAGE, "") else code,
        timestamps=bool(timestamps),
        draft=draft or "self",
        beam_size=beam,
        best_of=_whole_number(best_of, "Best of (samples per window)"),
        seed=_whole_number(seed, "Seed"),
    )


def parse_temperatures(text: str | None) -> tuple[float, ...]:
    """The temperature box: one value ("0": no fallback) or a comma list, the fallback schedule in order.

    Only the syntax is checked here; TranscribeOptions says which values are allowed.
    """
    items = [item.strip() for item in (text or "").split(",")]
    temperatures = []
    for item in filter(None, items):  # an empty item (a trailing comma) is no value
        try:
            temperatures.append(float(item))
        except ValueError:
            raise _fail(
                f"Temperature: {item!r} is not a number; give one value (0: no fallback) "
                f"or a comma list, e.g. {DEFAULT_TEMPERATURE_TEXT}."
            ) from None
    if not temperatures:
        raise _fail(
            f"Temperature: give one value (0: no fallback) or a comma list, e.g. {DEFAULT_TEMPERATURE_TEXT}."
        )
    return tuple(temperatures)


def transcribe_options(
    temperature: str | None,
    initial_prompt: str | None,
    compare: bool,
    settings: AppSettings,
    word_timestamps: bool = False,
    vad: bool = False,
) -> TranscribeOptions:
    """The page's long-form choices (raises InvalidOptionError for a temperature out of range)."""
    return TranscribeOptions(
        temperature=parse_temperatures(temperature),
        initial_prompt=(initial_prompt or "").strip() or None,
        compare=bool(compare),
        word_timestamps=bool(word_timestamps),
        vad=VadOptions() if vad else None,
        max_duration_s=settings.max_duration_s,
    )


def _prune_outputs(root: Path) -> None:
    """Download folders of earlier requests: Gradio has copied the files it served into its own cache."""
    now = time.time()
    for folder in root.glob("request-*"):
        try:
            if now - folder.stat().st_mtime > OUTPUT_MAX_AGE_S:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            continue


def write_downloads(result: Transcript, name: str, root: Path | None = None) -> list[str]:
    """txt, srt, vtt and json of `result` in a folder of their own, named after the input."""
    root = root or Path(tempfile.gettempdir()) / "asr-app"
    root.mkdir(parents=True, exist_ok=True)
    _prune_outputs(root)
    folder = root / f"request-{uuid.uuid4().hex[:12]}"
    stem = re.sub(r"[^\w.-]+", "_", Path(name).stem).strip("._") or "transcript"
    return [str(p) for p in write_result(result, folder / stem, DOWNLOAD_FORMATS)]


def render_outputs(
    result: TranscriptionResult,
    model: LoadedModel,
    name: str,
    timestamps: bool,
    first_temperature: float = 0.0,
) -> Outputs:
    """Everything the page shows for one finished transcription (`first_temperature`: the schedule's first,
    above which a segment came from the fallback)."""
    stats = result.stats
    return Outputs(
        transcript=result.text,
        figures=render.figures_html(stats, result.duration_s, result.language),
        speculation=render.speculation_html(render.token_pieces(result.segments, model.tokenizer)),
        plot=render.acceptance_figure(
            stats.passes, drafting=stats.has_draft, beam_search=bool(stats.beam_size)
        ),
        segments=render.segments_html(result.segments, first_temperature) if timestamps else "",
        files=write_downloads(result, name),
    )


def transcribe_audio(
    audio: str | None,
    model_name: str = DEFAULT_MODEL,
    draft: str = "self",
    decoding: str = GREEDY,
    beam_size: float = 5,
    language: str = AUTO_LANGUAGE,
    task: str = "transcribe",
    timestamps: bool = True,
    compare: bool = True,
    temperature: str = DEFAULT_TEMPERATURE_TEXT,
    best_of: float = 5,
    initial_prompt: str = "",
    seed: float = 0,
    word_timestamps: bool = False,
    vad: bool = False,
    progress: gr.Progress = gr.Progress(),  # noqa: B008 - Gradio's way to ask for a progress bar
    *,
    settings: AppSettings | None = None,
) -> Outputs:
    """The Transcribe button and the `/transcribe` API: an audio file path in, the page's outputs out."""
    settings = settings or AppSettings()
    path = _check_file(audio, settings)
    name = _display_name(path)
    try:
        options = decoding_options(draft, decoding, beam_size, language, task, timestamps, best_of, seed)
        long_form = transcribe_options(temperature, initial_prompt, compare, settings, word_timestamps, vad)
        duration_s = audio_duration(path)  # from the header: a long file is refused before any decoding
        if duration_s > settings.max_duration_s:
            raise _fail(
                f"{name}: {_minutes(duration_s)} of audio; this server accepts up to "
                f"{_minutes(settings.max_duration_s)}."
            )
        progress(0.05, desc=f"Loading {model_name} (the first time only)")
        model = load_model(model_name or DEFAULT_MODEL, device=settings.device)
        progress(0.2, desc="Transcribing" + (", then the model alone to compare" if compare else ""))
        result = transcribe(model, path, options, long_form)
        if not result.text.strip():
            raise _fail(f"{name}: no speech found (the recording is silent or too quiet).")
        shown = bool(timestamps) or bool(word_timestamps)  # word timings are shown among the segments
        return render_outputs(result, model, name, shown, long_form.temperature[0])
    except gr.Error:
        raise
    except AsrError as exc:
        # The engine names the input by its path: a temporary upload path means nothing to the user.
        raise _fail(str(exc).replace(str(path), name)) from None
    except Exception as exc:  # a bug: logged in full here, one line on the page, and the server goes on
        logger.exception("transcription of %s failed", name)
        raise _fail(
            f"{name}: internal error ({type(exc).__name__}); the server log has the details."
        ) from None
