"""The app's Live mode without a browser (app/live.py): microphone chunks as the browser sends them (WAV
files, chunks held back appended under the first header), one stream per tab with its worker thread, the
--concurrency limit on live streams, and Stop's transcript, figures and downloads."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

gr = pytest.importorskip("gradio", reason="the app's dependencies are not installed: pip install -e '.[app]'")

from app import live  # noqa: E402
from app.handlers import AppSettings  # noqa: E402
from asr.audio_io import load_audio  # noqa: E402
from asr.models import load_model  # noqa: E402
from tests.util import normalize, random_model  # noqa: E402

JFK = "audio/jfk/jfk.wav"
BROWSER_RATE = 48000
CHUNK_S = 0.1  # what Gradio's recorder sends


def wav_bytes(samples: np.ndarray, rate: int, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def browser_chunks(samples16k: np.ndarray, folder: Path, chunks_per_file: int = 1) -> list[str]:
    """`samples16k` as the browser streams it: 48-kHz int16 WAV files of 0.1 s, each later file's chunks
    appended under the first file's header (as Gradio's recorder does), `chunks_per_file` chunks a file."""
    audio = soxr.resample(samples16k, 16000, BROWSER_RATE).astype(np.float32)
    step = int(CHUNK_S * BROWSER_RATE)
    header = wav_bytes(np.zeros(step, np.float32), BROWSER_RATE)[:44]  # its data size: one chunk's
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, begin in enumerate(range(0, pcm.shape[0], step * chunks_per_file)):
        path = folder / f"chunk-{n:04d}.wav"
        path.write_bytes(header + pcm[begin : begin + step * chunks_per_file].tobytes())
        paths.append(str(path))
    return paths


# --- reading what the browser sends ----------------------------------------------------------------------


def test_a_chunk_is_read_to_the_end_of_the_file_not_to_its_header_size(tmp_path):
    rng = np.random.default_rng(0)
    samples = (rng.standard_normal(48000) * 0.1).astype(np.float32)
    first = wav_bytes(samples[:4800], BROWSER_RATE)
    appended = (np.clip(samples[4800:], -1, 1) * 32768).clip(-32768, 32767).astype("<i2").tobytes()
    path = tmp_path / "held-back.wav"
    path.write_bytes(first + appended)
    rate, audio = live.read_chunk(path)
    assert rate == BROWSER_RATE and audio.dtype == np.float32
    assert audio.shape == (48000,)  # pydub (Gradio's numpy type) would give 4800
    np.testing.assert_allclose(audio, samples, atol=1 / 32768 + 1e-6)


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "PCM_32", "FLOAT", "PCM_U8"])
def test_chunk_formats_and_channels(tmp_path, subtype):
    rng = np.random.default_rng(1)
    stereo = (rng.standard_normal((1600, 2)) * 0.2).clip(-1, 1).astype(np.float32)
    path = tmp_path / "c.wav"
    path.write_bytes(wav_bytes(stereo, 16000, subtype))
    rate, audio = live.read_chunk(path)
    assert rate == 16000 and audio.shape == (1600,)
    np.testing.assert_allclose(audio, stereo.mean(axis=1), atol=1 / 64 if subtype == "PCM_U8" else 1e-4)


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"ID3\x03" + b"\0" * 60, "not WAV"),
        (b"RIFF\0\0\0\0WAVEfmt ", "without its format or data"),
        (wav_bytes(np.zeros(10, np.float32), 16000, "DOUBLE"), r"unsupported WAV format \(tag 3, 64 bits\)"),
    ],
)
def test_a_bad_chunk_is_one_line(tmp_path, raw, message):
    path = tmp_path / "bad.wav"
    path.write_bytes(raw)
    with pytest.raises(gr.Error, match=message):
        live.read_chunk(path)


# --- the slots ---------------------------------------------------------------------------------------------


def test_slots_refuse_beyond_the_limit_and_come_back():
    slots = live.LiveSlots(2)
    assert slots.take() and slots.take() and not slots.take()
    slots.give_back()
    assert slots.active == 1 and slots.take()


# --- through the handlers ----------------------------------------------------------------------------------


def feed_all(paths, settings, slots, session=None, model="tiny.en", pace_s=0.0):
    for path in paths:
        session, view = live.live_chunk(
            path, session, model, "self", "en", "transcribe", settings=settings, slots=slots
        )
        if pace_s:
            time.sleep(pace_s)
    return session, view


@pytest.fixture
def random_tiny(monkeypatch):
    model = random_model()
    monkeypatch.setattr(live, "load_model", lambda *args, **kwargs: model)
    return model


def test_a_second_stream_beyond_the_limit_is_refused_until_a_tab_closes(tmp_path, random_tiny):
    settings, slots = AppSettings(concurrency_limit=1), live.LiveSlots(1)
    samples = np.zeros(16000, np.float32)
    first, _ = feed_all(browser_chunks(samples, tmp_path)[:3], settings, slots)
    assert slots.active == 1
    with pytest.raises(gr.Error, match="already runs 1 live stream"):
        feed_all(browser_chunks(samples, tmp_path)[:1], settings, slots)
    live.release_session(first)  # Gradio's delete callback: the first tab was closed
    assert slots.active == 0
    first._worker.join(timeout=10)
    assert not first._worker.is_alive()  # its worker ended with it
    second, _ = feed_all(browser_chunks(samples, tmp_path)[:1], settings, slots)
    assert slots.active == 1
    live.live_stop(second)
    assert slots.active == 0


def test_record_again_without_stop_frees_the_old_stream(tmp_path, random_tiny):
    settings, slots = AppSettings(), live.LiveSlots(1)
    session, _ = feed_all(browser_chunks(np.zeros(8000, np.float32), tmp_path), settings, slots)
    state, view = live.live_reset(session)
    assert state is None and view == live.render.LIVE_PLACEHOLDER and slots.active == 0


def test_stop_before_anything_streamed_is_one_line():
    with pytest.raises(gr.Error, match="Nothing was streamed"):
        live.live_stop(None)


def test_an_engine_failure_is_one_line_and_frees_the_slot(tmp_path, random_tiny, monkeypatch, caplog):
    settings, slots = AppSettings(), live.LiveSlots(1)

    def broken(self, samples):
        raise RuntimeError("boom")

    monkeypatch.setattr(live.LiveStream, "feed", broken)
    session, _ = feed_all(browser_chunks(np.zeros(4800, np.float32), tmp_path)[:1], settings, slots)
    session._worker.join(timeout=10)
    with pytest.raises(gr.Error, match=r"Live transcription failed \(RuntimeError\)"):
        feed_all(browser_chunks(np.zeros(1600, np.float32), tmp_path)[:1], settings, slots, session)
    with pytest.raises(gr.Error, match=r"Live transcription failed \(RuntimeError\)"):
        live.live_stop(session)
    assert slots.active == 0 and "boom" in caplog.text


@pytest.mark.slow
def test_live_on_real_speech_loses_no_audio_and_stop_gives_transcript_figures_downloads(tmp_path, speech_dir):
    """jfk.wav streamed as the browser does, in real time (chunks of 0.1 s, some held back and sent
    together): the captions grow while it plays, nothing of the audio is lost, and Stop gives the
    transcript (the offline one's words), the figures and the four downloads."""
    load_model("tiny.en")  # loaded before the clock starts
    settings, slots = AppSettings(), live.LiveSlots(1)
    samples = load_audio(speech_dir / JFK)
    held_back = browser_chunks(samples[: 16000 * 5], tmp_path / "a", chunks_per_file=3)
    rest = browser_chunks(samples[16000 * 5 :], tmp_path / "b")
    session, _ = feed_all(held_back, settings, slots, pace_s=3 * CHUNK_S)
    session, view_while_playing = feed_all(rest, settings, slots, session, pace_s=CHUNK_S)
    assert 'class="asr-live-committed">' in view_while_playing
    committed_while_playing = session.stream.text
    assert "ask not what your country" in normalize_text(committed_while_playing)

    state, captions, transcript, figures, segments, speculation, plot, files = live.live_stop(session)
    assert normalize_text(transcript) in normalize_text(captions) and "Live" in speculation
    assert state is None and plot is None and slots.active == 0
    # every sample arrived: 48 kHz -> 16 kHz, the resampler's tail flushed at Stop
    assert abs(session.stream.received_s - samples.shape[0] / 16000) < 0.01
    words = normalize_text(transcript)
    assert "my fellow americans" in words and "ask what you can do for your country" in words
    assert transcript.startswith(committed_while_playing)  # commits are never taken back
    for label in ("commit latency", "target passes vs plain", "accepted: previous text / draft"):
        assert label in figures
    assert "→" in segments
    names = sorted(Path(f).suffix for f in files)
    assert names == [".json", ".srt", ".txt", ".vtt"]
    record = json.loads(next(Path(f) for f in files if f.endswith(".json")).read_text())
    assert record["text"] == transcript and record["stats"]["updates"] >= 8
    assert record["stats"]["target_passes"] < record["stats"]["plain_passes"]
    assert " --> " in next(Path(f) for f in files if f.endswith(".srt")).read_text()


def normalize_text(text: str) -> str:
    return " ".join(normalize(text))


def test_worker_threads_end_with_their_sessions(tmp_path, random_tiny):
    settings, slots = AppSettings(), live.LiveSlots(3)
    before = threading.active_count()
    sessions = [feed_all(browser_chunks(np.zeros(3200, np.float32), tmp_path), settings, slots)[0]]
    sessions.append(feed_all(browser_chunks(np.zeros(3200, np.float32), tmp_path), settings, slots)[0])
    live.live_stop(sessions[0])
    live.release_session(sessions[1])
    for s in sessions:
        s._worker.join(timeout=10)
    assert threading.active_count() == before


def test_a_chunk_after_stop_is_dropped_quietly(tmp_path, random_tiny, caplog):
    """The browser may send one more chunk after Stop (Gradio's recorder): it is ignored, no error."""
    settings, slots = AppSettings(), live.LiveSlots(1)
    paths = browser_chunks(np.zeros(8000, np.float32), tmp_path)
    session, _ = feed_all(paths[:-1], settings, slots)
    live.live_stop(session)
    after, _ = feed_all(paths[-1:], settings, slots, session)
    assert after is session and session.queued_s < 0.5 and "live stream failed" not in caplog.text
