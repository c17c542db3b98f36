"""The page: `build_demo(settings)` wires components to `app.handlers.transcribe_audio`.

Nothing is loaded here: models load on the first request that needs them. `launch_options(settings)` gives
the arguments `Blocks.launch` needs to enforce the same settings (upload size, the samples folder).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from asr.decoding import MAX_BEST_OF

from . import handlers, live, memory, render
from .handlers import AUTO_LANGUAGE, BEAM, DEFAULT_TEMPERATURE_TEXT, GREEDY, AppSettings

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "samples"  # absent when installed without the repo
SAMPLE_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus")
CACHE_CLEANUP = (1800, 3600)  # every 30 min, uploads and outputs older than an hour are deleted

INTRO = """
# Whisper, offline, with speculative decoding
Upload or record speech and press **Transcribe**. A cheap *draft* proposes a few tokens; Whisper (the
*target*) checks them all in one pass and keeps the ones it would have written itself. The transcript is
exactly the target's own, produced with fewer target passes: the figures show how much faster it was and
where the draft was right.
"""


# "scheme://...": Gradio fetches an input file given as an http(s) URL itself, server side (issue #19).
_REMOTE = re.compile(r"^\s*[a-zA-Z][a-zA-Z0-9+.-]*://")


def _file_paths(value: Any) -> Iterator[str]:
    """The `path` of every FileData-like dict inside an input value (what Gradio would move to its cache)."""
    if isinstance(value, dict):
        if isinstance(value.get("path"), str):
            yield value["path"]
        for item in value.values():
            yield from _file_paths(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _file_paths(item)


class LocalFilesBlocks(gr.Blocks):
    """gr.Blocks that refuses input files given as URLs, before Gradio would fetch them.

    Gradio resolves an input `{"path": "https://...", "meta": {"_type": "gradio.FileData"}}` by downloading
    it, on the server, for whoever calls the API: with the app bound beyond loopback, a way to make the
    server send requests for a client (request forgery). Its own guard only blocks private addresses. The
    page never sends URLs (it uploads), so nothing legitimate is lost; the check runs on every input of
    every event, as Gradio's move-to-cache step does.
    """

    def validate_inputs(self, block_fn: Any, inputs: list[Any]) -> None:
        super().validate_inputs(block_fn, inputs)
        for path in _file_paths(inputs):
            if _REMOTE.match(path):
                raise gr.Error(
                    "Remote URLs are not accepted as input: upload the audio file itself.",
                    print_exception=False,
                )


def _examples(samples_dir: Path | None) -> list[list[str]]:
    if samples_dir is None or not samples_dir.is_dir():
        return []
    return [[str(p)] for p in sorted(samples_dir.iterdir()) if p.suffix.lower() in SAMPLE_SUFFIXES]


def build_demo(settings: AppSettings | None = None, samples_dir: Path | None = SAMPLES_DIR) -> gr.Blocks:
    """The whole app, queued with the settings' concurrency limit; launch it with `launch_options`."""
    settings = settings or AppSettings()
    models = handlers.model_choices()
    default_model = handlers.DEFAULT_MODEL if handlers.DEFAULT_MODEL in models else models[0]
    with LocalFilesBlocks(
        title="asr: speculative Whisper", analytics_enabled=False, delete_cache=CACHE_CLEANUP
    ) as demo:
        gr.Markdown(INTRO)
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                with gr.Tabs():
                    with gr.Tab("File or recording", elem_id="file-tab"):
                        audio = gr.Audio(
                            sources=["upload", "microphone"],
                            type="filepath",
                            label="Audio: upload a file or record",
                            elem_id="audio-input",
                        )
                        examples = _examples(samples_dir)
                        if examples:
                            gr.Examples(
                                examples, inputs=[audio], label="Examples (synthetic speech, samples/)"
                            )
                        run = gr.Button(
                            "Transcribe", variant="primary", size="lg", elem_id="transcribe-button"
                        )
                    with gr.Tab("Live", elem_id="live-tab"):
                        live_audio = gr.Audio(
                            sources=["microphone"],
                            type="filepath",  # app.live.read_chunk reads it (see there why)
                            streaming=True,
                            label="Live: record, and the text appears as you speak",
                            elem_id="live-input",
                        )
                        live_view = gr.HTML(render.LIVE_PLACEHOLDER, elem_id="live-captions")
                        gr.Markdown(
                            "Live decodes greedily (temperature 0, no beams) with the target, model, draft, "
                            "language and task chosen below; the previous second's text is its first draft.",
                            elem_id="live-note",
                        )
                with gr.Accordion("Options", open=True):
                    with gr.Row():
                        model = gr.Dropdown(models, value=default_model, label="Target model")
                        draft = gr.Dropdown(
                            handlers.draft_choices(models),
                            value="self",
                            label="Draft",
                            info="self: a cheap low-precision copy of the target; none: plain decoding",
                        )
                    with gr.Row():
                        decoding = gr.Radio([GREEDY, BEAM], value=GREEDY, label="Decoding")
                        beam_size = gr.Slider(2, 8, value=5, step=1, label="Beams", interactive=False)
                    with gr.Row():
                        temperature = gr.Textbox(
                            value=DEFAULT_TEMPERATURE_TEXT,
                            label="Temperature",
                            info="0: no fallback; a list: a window whose text looks repetitive or "
                            "improbable is decoded again, sampling at the next one",
                            max_lines=1,
                            elem_id="temperature",
                        )
                        best_of = gr.Slider(
                            1,
                            MAX_BEST_OF,
                            value=5,
                            step=1,
                            label="Best of",
                            info="samples per window above temperature 0 (beams apply at 0)",
                            elem_id="best-of",
                        )
                    with gr.Row():
                        initial_prompt = gr.Textbox(
                            value="",
                            label="Initial prompt (optional)",
                            placeholder="Words, names or a style to prompt the model with, "
                            "e.g. Dr. Nguyen, Kubernetes",
                            max_lines=2,
                            scale=3,
                            elem_id="initial-prompt",
                        )
                        seed = gr.Number(
                            value=0,
                            precision=0,
                            label="Seed",
                            info="of the sampling: same seed, same output",
                            scale=1,
                            min_width=100,
                            elem_id="seed",
                        )
                    with gr.Row():
                        language = gr.Dropdown(
                            handlers.language_choices(),
                            value=AUTO_LANGUAGE,
                            label="Language",
                            allow_custom_value=True,
                        )
                        task = gr.Radio(["transcribe", "translate"], value="transcribe", label="Task")
                    with gr.Row():
                        timestamps = gr.Checkbox(value=True, label="Timestamps (segment times)")
                        word_timestamps = gr.Checkbox(
                            value=False,
                            label="Word timings (hover a word for its time)",
                            elem_id="word-timestamps",
                        )
                        vad = gr.Checkbox(
                            value=False, label="Skip non-speech (voice activity)", elem_id="vad"
                        )
                    compare = gr.Checkbox(
                        value=True,
                        label="Also run the target alone: measure the speedup and confirm identical output",
                    )
                gr.Markdown(
                    f"Limits: {settings.max_upload_mb:g} MB per file, "
                    f"{settings.max_duration_s / 60:g} min of audio"
                    f" (live too); {settings.concurrency_limit} live "
                    f"stream{'s' if settings.concurrency_limit != 1 else ''} at once.",
                    elem_id="limits",
                )
            with gr.Column(scale=3, min_width=400):
                transcript = gr.Textbox(
                    label="Transcript", lines=3, max_lines=12, buttons=["copy"], elem_id="transcript"
                )
                segments = gr.HTML(elem_id="segments")
                figures = gr.HTML(render.FIGURES_PLACEHOLDER, elem_id="figures")
                gr.Markdown("### Where the draft was right", elem_id="speculation-title")
                speculation = gr.HTML(render.SPECULATION_PLACEHOLDER, elem_id="speculation")
                plot = gr.Plot(show_label=False, container=False, elem_id="acceptance-plot", format="png")
                files = gr.File(label="Downloads", file_count="multiple", elem_id="downloads")
        decoding.change(
            lambda choice: gr.Slider(interactive=choice == BEAM),
            inputs=[decoding],
            outputs=[beam_size],
            api_visibility="private",
            queue=False,
        )
        run.click(
            # malloc_trim after each request: without it RSS grew ~0.6 MB a request for good (#24)
            memory.releasing_memory(functools.partial(handlers.transcribe_audio, settings=settings)),
            inputs=[
                audio,
                model,
                draft,
                decoding,
                beam_size,
                language,
                task,
                timestamps,
                compare,
                temperature,
                best_of,
                initial_prompt,
                seed,
                word_timestamps,
                vad,
            ],
            outputs=[transcript, figures, speculation, plot, segments, files],
            api_name="transcribe",
            show_progress_on=[transcript],  # one progress bar (and one error badge), not one per output
            concurrency_limit=settings.concurrency_limit,
        )
        # Live: one stream per tab in its State (deleted, and its slot given back, when the tab closes)
        slots = live.LiveSlots(settings.concurrency_limit)
        session = gr.State(None, time_to_live=live.SESSION_TTL_S, delete_callback=live.release_session)
        live_audio.start_recording(
            live.live_reset,
            inputs=[session],
            outputs=[session, live_view],
            api_visibility="private",
            queue=False,
        )
        live_audio.stream(
            functools.partial(live.live_chunk, settings=settings, slots=slots),
            inputs=[live_audio, session, model, draft, language, task],
            outputs=[session, live_view],
            stream_every=live.STREAM_EVERY_S,
            time_limit=int(settings.max_duration_s) + 5,
            concurrency_limit=settings.concurrency_limit,
            api_visibility="private",
            show_progress="hidden",
        )
        live_audio.stop_recording(
            memory.releasing_memory(live.live_stop),
            inputs=[session],
            outputs=[session, live_view, transcript, figures, segments, speculation, plot, files],
            api_visibility="private",
            show_progress_on=[transcript],
        )
    demo.queue(default_concurrency_limit=settings.concurrency_limit, max_size=settings.max_queue)
    return demo


def launch_options(
    settings: AppSettings | None = None, samples_dir: Path | None = SAMPLES_DIR
) -> dict[str, Any]:
    """Arguments for `demo.launch(...)` that enforce the settings."""
    settings = settings or AppSettings()
    allowed = [str(samples_dir)] if samples_dir is not None and samples_dir.is_dir() else []
    return {
        "max_file_size": settings.max_upload_bytes,
        "allowed_paths": allowed,
        "footer_links": ["api"],
        "run_history": False,
    }
