"""The page's Live mode: microphone chunks from the browser into an `asr.live.LiveStream`, one per tab.

Gradio streams the microphone (`gr.Audio(streaming=True)`) as small WAV chunks to `live_chunk`, which reads
them (`read_chunk`), resamples them to 16 kHz (one soxr stream per session, so chunk edges leave no seams)
and queues them for the session's worker thread, which feeds the stream and renders the captions: the
committed text and the tentative tail. The handler returns at once with the latest captions; it must not
decode, because Gradio keeps only the latest chunk that arrives while a handler runs.
What Gradio's recorder does not send is lost: the first moments after Record (before the stream is open)
and the last chunk after Stop. `live_stop` (the recorder's Stop) finishes the stream: everything queued
decoded, the last text committed, the transcript, the figures and the downloads as for an upload.

A session lives in the tab's `gr.State`: Gradio deletes it when the tab is closed or reloaded (or after
`SESSION_TTL_S`), and its delete callback ends the worker and gives the slot back: at most
`AppSettings.concurrency_limit` live streams run at once; one more is refused with a message, not queued
(a caption that waits in a queue is no caption).
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from pathlib import Path

import gradio as gr
import numpy as np
import soxr

from asr.audio import SAMPLE_RATE
from asr.audio_io import SOXR_QUALITY
from asr.errors import AsrError
from asr.live import LiveOptions, LiveStream
from asr.models import DEFAULT_MODEL, load_model

from . import render
from .handlers import AppSettings, _fail, decoding_options, write_downloads

logger = logging.getLogger("asr.app")

STREAM_EVERY_S = 0.5  # the browser sends a chunk this often; the stream decodes again every UPDATE_S
UPDATE_S = 1.0
SESSION_TTL_S = 3600  # a tab's stream is dropped after this long without a chunk or a stop


class LiveSlots:
    """How many live streams may run at once: `take()` a slot or be refused; `give_back()` it once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._active = 0
        self._lock = threading.Lock()

    @property
    def active(self) -> int:
        return self._active

    def take(self) -> bool:
        with self._lock:
            if self._active >= self.limit:
                return False
            self._active += 1
            return True

    def give_back(self) -> None:
        with self._lock:
            self._active = max(0, self._active - 1)


class LiveSession:
    """One tab's stream: the engine's stream fed by a worker thread of its own, so a chunk's handler only
    queues the audio and returns (Gradio keeps only the latest chunk that arrives while the handler runs:
    a handler that decoded would lose the audio meanwhile). The worker feeds everything queued at once, so
    a slow update makes the next one longer, never lost."""

    def __init__(self, stream: LiveStream, model_name: str, draft: str, rate: int, slots: LiveSlots) -> None:
        self.stream, self.model_name, self.draft = stream, model_name, draft
        self.rate, self.slots = rate, slots
        self.resampler = (
            None
            if rate == SAMPLE_RATE
            else soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality=SOXR_QUALITY)
        )
        self.t0: float | None = None  # perf_counter() when the first chunk arrived
        self.t0_audio_s = 0.0  # that chunk's audio
        self.queued_s = 0.0  # audio queued in all (what the browser sent)
        self.error: BaseException | None = None  # what stopped the worker
        self.view = render.live_html("", "", stream.stats.to_dict(), 0.0)
        self._pending: list[np.ndarray] = []
        self._closing = False
        self._released = False
        self._ready = threading.Condition()
        stream.clock = self.clock
        self._worker = threading.Thread(target=self._work, name="asr-live", daemon=True)
        self._worker.start()

    def clock(self) -> float:
        """The stream's time now: the first chunk's audio, plus the wall time since it arrived (so a
        commit's latency counts every wait: in the browser, on the way, in the queue, in the update)."""
        return self.t0_audio_s + (time.perf_counter() - (self.t0 or time.perf_counter()))

    def put(self, audio: np.ndarray) -> None:
        """Queue a chunk (mono float32 at the browser's rate) for the worker."""
        with self._ready:
            if self._closing:
                return  # after Stop: a chunk still on its way (the resampler has had its last input)
            samples = self.resampler.resample_chunk(audio) if self.resampler is not None else audio
            if self.t0 is None:
                self.t0, self.t0_audio_s = time.perf_counter(), samples.shape[0] / SAMPLE_RATE
            self.queued_s += samples.shape[0] / SAMPLE_RATE
            self._pending.append(samples)
            self._ready.notify()

    def _work(self) -> None:
        try:
            while True:
                with self._ready:
                    while not self._pending and not self._closing:
                        self._ready.wait()
                    if not self._pending:
                        return
                    audio = np.concatenate(self._pending)
                    self._pending = []
                self.stream.feed(audio)
                stream = self.stream
                self.view = render.live_html(
                    stream.text, stream.tentative, stream.stats.to_dict(), stream.received_s
                )
        except BaseException as exc:  # reported by the next chunk or by Stop, in one line
            logger.exception("live stream failed")
            self.error = exc

    def finish(self) -> None:
        """Stop: everything queued decoded (the resampler's tail too), then the last text committed."""
        with self._ready:
            if not self._closing and self.resampler is not None:
                self._pending.append(self.resampler.resample_chunk(np.zeros(0, np.float32), last=True))
            self._closing = True
            self._ready.notify()
        self._worker.join()
        if self.error is None and not self.stream.finished:
            self.stream.finish()

    def release(self) -> None:
        """The worker told to end and the slot given back (once; safe from any thread: Stop, Record
        again, or Gradio deleting the tab's state)."""
        with self._ready:
            self._closing = True
            self._pending = []
            self._ready.notify()
            released, self._released = self._released, True
        if not released:
            self.slots.give_back()


def read_chunk(path: str | Path) -> tuple[int, np.ndarray]:
    """A streamed microphone chunk (a WAV file) -> (sample rate, float32 mono).

    The browser's recorder sends its first WAV header with every chunk, and chunks it held back while the
    server was busy are appended to it: the header's data size counts only the first chunk, so readers that
    trust it (pydub, which Gradio's numpy conversion uses) drop the rest. Here the data runs to the end of
    the file. PCM (8/16/24/32-bit) and 32-bit float.
    """
    raw = Path(path).read_bytes()
    if len(raw) < 12 or raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise _fail("The microphone sent audio that is not WAV; record again.")
    fmt: tuple[int, int, int, int] | None = None
    offset = 12
    while offset + 8 <= len(raw):
        chunk_id, size = raw[offset : offset + 4], struct.unpack("<I", raw[offset + 4 : offset + 8])[0]
        body = offset + 8
        if chunk_id == b"fmt ":
            tag, channels, rate = struct.unpack("<HHI", raw[body : body + 8])
            bits = struct.unpack("<H", raw[body + 14 : body + 16])[0]
            if tag == 0xFFFE and size >= 26:  # WAVE_FORMAT_EXTENSIBLE: the sub-format's tag
                tag = struct.unpack("<H", raw[body + 24 : body + 26])[0]
            fmt = (tag, channels, rate, bits)
        elif chunk_id == b"data":
            if fmt is None:
                break
            return fmt[2], _pcm(raw[body:], *fmt)
        offset = body + size + (size & 1)
    raise _fail("The microphone sent a WAV chunk without its format or data; record again.")


def _pcm(data: bytes, tag: int, channels: int, rate: int, bits: int) -> np.ndarray:
    width = bits // 8
    if channels < 1 or rate < 1 or width not in (1, 2, 3, 4) or tag not in (1, 3):
        raise _fail(f"The microphone sent an unsupported WAV format (tag {tag}, {bits} bits); record again.")
    data = data[: len(data) - len(data) % (width * channels)]
    if tag == 3:
        if width != 4:
            raise _fail(f"The microphone sent {bits}-bit float audio; record again.")
        audio = np.frombuffer(data, "<f4").astype(np.float32)
    elif width == 1:
        audio = (np.frombuffer(data, np.uint8).astype(np.float32) - 128) / 128
    elif width == 3:
        b = np.frombuffer(data, np.uint8).reshape(-1, 3).astype(np.int32)
        audio = ((b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8 >> 8).astype(np.float32) / 2**23
    else:
        dtype = "<i2" if width == 2 else "<i4"
        audio = np.frombuffer(data, dtype).astype(np.float32) / 2 ** (bits - 1)
    return audio.reshape(-1, channels).mean(axis=1) if channels > 1 else audio


def release_session(session: LiveSession | None) -> None:
    """The tab's state was deleted (tab closed or reloaded, or its time to live passed)."""
    if isinstance(session, LiveSession):
        session.release()


def _start(
    rate: int,
    model_name: str,
    draft: str,
    language: str,
    task: str,
    settings: AppSettings,
    slots: LiveSlots,
) -> LiveSession:
    if not slots.take():
        raise _fail(
            f"This server already runs {slots.limit} live stream{'s' if slots.limit != 1 else ''} "
            "(its limit); try again in a moment, or upload a recording."
        )
    try:
        options = decoding_options(draft, "greedy", None, language, task, True)
        model = load_model(model_name or DEFAULT_MODEL, device=settings.device)
        stream = LiveStream(model, options, LiveOptions(update_s=UPDATE_S))
        return LiveSession(stream, model_name, draft or "self", rate, slots)
    except BaseException:
        slots.give_back()
        raise


def _internal(exc: Exception) -> gr.Error:
    return _fail(f"Live transcription failed ({type(exc).__name__}); the server log has the details.")


def live_chunk(
    chunk: str | None,
    session: LiveSession | None,
    model_name: str = DEFAULT_MODEL,
    draft: str = "self",
    language: str = "auto",
    task: str = "transcribe",
    *,
    settings: AppSettings,
    slots: LiveSlots,
) -> tuple[LiveSession | None, str]:
    """One microphone chunk (a WAV file: what the browser recorded since the last one it sent) fed to the
    tab's stream, which the first chunk starts. -> state, captions."""
    if chunk is None:
        return session, render.LIVE_PLACEHOLDER if session is None else session.view
    try:
        rate, audio = read_chunk(chunk)
        if session is None:
            session = _start(rate, model_name, draft, language, task, settings, slots)
        if session.error is not None:
            raise session.error
        if rate != session.rate:
            raise _fail(
                f"The microphone changed its sample rate ({session.rate} -> {rate} Hz); record again."
            )
        if session.queued_s < settings.max_duration_s:  # at the limit, Stop gives what was heard
            session.put(audio)
        return session, session.view
    except gr.Error:
        raise
    except AsrError as exc:
        raise _fail(str(exc)) from None
    except Exception as exc:  # a bug: logged in full, one line on the page, the server goes on
        logger.exception("live stream failed")
        raise _internal(exc) from None


def live_stop(
    session: LiveSession | None,
) -> tuple[None, str, str, str, str, str, None, list[str]]:
    """Stop: the stream finished -> state (cleared), captions, transcript, figures, segments, the token
    picture (a note), the plot (cleared), downloads."""
    if session is None:
        raise _fail("Nothing was streamed: allow the microphone and press Record, then speak.")
    try:
        session.finish()
        if session.error is not None:
            raise session.error
        stream = session.stream
        result = stream.result()
        stats = stream.stats.to_dict()
        heard = result.duration_s
        what_ran = (
            f"target {session.model_name} · draft: previous text, then {session.draft} · "
            f"updates every {UPDATE_S:g} s, greedy"
        )
        files = write_downloads(result, "live")
        return (
            None,
            render.live_html(result.text, "", stats, heard),
            result.text,
            render.live_figures_html(stats, heard, result.language, what_ran),
            render.segments_html(result.segments),
            render.LIVE_SPECULATION_NOTE,
            None,  # no plot: a live stream's passes belong to many overlapping decodes
            files,
        )
    except gr.Error:
        raise
    except AsrError as exc:
        raise _fail(str(exc)) from None
    except Exception as exc:
        logger.exception("finishing a live stream failed")
        raise _internal(exc) from None
    finally:
        session.release()


def live_reset(session: LiveSession | None) -> tuple[None, str]:
    """Record pressed again: a new stream (the slot of one that was never stopped is given back)."""
    release_session(session)
    return None, render.LIVE_PLACEHOLDER
