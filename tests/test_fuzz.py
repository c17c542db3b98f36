"""Fuzz: corrupted real audio of every format ends in a transcript or one line of our own, never worse.

Issue #19 found ten defects of one class: an input the code did not expect led to a traceback-free but wrong
outcome (half a transcript, a leaked library line, a file silently skipped). Here hypothesis corrupts a
real speech clip written as WAV, FLAC, MP3, Ogg Vorbis and Opus (truncation at any point, flipped bytes, a
garbage header, a zero-length chunk) and checks, for the Python API and for the CLI's folder mode:
- the result is audio (finite float32 samples in range) or a transcript, or one `AudioLoadError` line that
  names the input; never another exception, never a hang (each example runs under an alarm);
- the CLI prints only its own lines (nothing from libsndfile or libmpg123), reports every input exactly once
  (ok or FAILED) and counts them all in its summary.
A tiny random-weight model stands in for Whisper: what is under test is everything around the decoder.
Bounded to well under a minute (max_examples below).
"""

from __future__ import annotations

import os
import re
import signal
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import asr.models
from asr import cli
from asr.audio_io import MAX_FLOAT_PEAK, load_audio
from asr.errors import AudioLoadError
from asr.transcribe import transcribe
from tests.util import random_model

CLIP = "audio/librispeech/1089-134691-0000.flac"  # 2 s of real speech
CLIP_SECONDS = 1.5  # what is kept of it: every format decodes in milliseconds
FORMATS = {  # suffix: (libsndfile major format, subtype)
    ".wav": ("WAV", "PCM_16"),
    ".flac": ("FLAC", "PCM_16"),
    ".mp3": ("MP3", None),
    ".ogg": ("OGG", "VORBIS"),
    ".opus": ("OGG", "OPUS"),
}
TIME_LIMIT_S = 30  # one example, model included; a hang fails the test instead of stalling CI
# CI runs the counts below (~30 s in all); ASR_FUZZ_SCALE=20 multiplies them for a deeper search by hand.
SCALE = int(os.environ.get("ASR_FUZZ_SCALE", "1"))


def fuzz_settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples * SCALE,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        derandomize=SCALE == 1,  # CI tries the same examples every run; a deeper search by hand explores
    )


class Clips(dict):
    """{suffix: file bytes}; printed short in a falsifying example (the bytes are the fixture's)."""

    def __repr__(self) -> str:
        return f"<clips {sorted(self)}>"


@pytest.fixture(scope="module")
def clips(speech_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Clips:
    """The real clip, cut to CLIP_SECONDS, as the bytes of a file of each format this libsndfile writes."""
    samples, rate = sf.read(speech_dir / CLIP, dtype="float32")
    samples = samples[: int(CLIP_SECONDS * rate)]
    folder = tmp_path_factory.mktemp("clips")
    encoded = Clips()
    for suffix, (major, subtype) in FORMATS.items():
        if major not in sf.available_formats() or (subtype and subtype not in sf.available_subtypes(major)):
            continue
        path = folder / f"clip{suffix}"
        rate_out = 48000 if subtype == "OPUS" else rate  # Opus encodes 8/12/16/24/48 kHz only
        data = samples if rate_out == rate else np.repeat(samples, 3)
        sf.write(path, data, rate_out, format=major, subtype=subtype)
        encoded[suffix] = path.read_bytes()
    assert {".wav", ".flac"} <= set(encoded)
    return encoded


@pytest.fixture(scope="module")
def model():
    return random_model(seed=0)


# --- corruptions --------------------------------------------------------------------------------------------


def truncate(data: bytes, draw: Callable) -> bytes:
    return data[: draw(st.integers(0, len(data) - 1))]


def flip_bytes(data: bytes, draw: Callable) -> bytes:
    corrupted = bytearray(data)
    for _ in range(draw(st.integers(1, 16))):
        position = draw(st.integers(0, len(data) - 1))
        corrupted[position] ^= draw(st.integers(1, 255))
    return bytes(corrupted)


def garbage_header(data: bytes, draw: Callable) -> bytes:
    n = draw(st.integers(1, min(256, len(data))))
    return draw(st.binary(min_size=n, max_size=n)) + data[n:]


def zero_length_chunk(data: bytes, draw: Callable) -> bytes:
    """A chunk, block, page or tag that declares length 0, where the format has one."""
    if data[:4] == b"RIFF":  # set a chunk's size to 0 (fmt, data, ...), or insert an empty chunk
        offsets, position = [], 12
        while position + 8 <= len(data):
            offsets.append(position)
            position += 8 + struct.unpack("<I", data[position + 4 : position + 8])[0]
        at = draw(st.sampled_from(offsets))
        if draw(st.booleans()):
            return data[: at + 4] + b"\0\0\0\0" + data[at + 8 :]
        return data[:at] + b"JUNK\0\0\0\0" + data[at:]
    if data[:4] == b"fLaC":  # STREAMINFO (or an inserted PADDING block) of length 0
        if draw(st.booleans()):
            return data[:5] + b"\0\0\0" + data[8:]
        return data[:4] + bytes([data[4] & 0x7F]) + data[5:8] + data[8:42] + b"\x01\0\0\0" + data[42:]
    if data[:4] == b"OggS":  # a page with no segments
        pages = [m.start() for m in re.finditer(b"OggS", data)]
        at = draw(st.sampled_from(pages))
        return data[: at + 26] + b"\0" + data[at + 27 :]
    # MP3: an empty ID3v2 tag in front, or a frame's bytes zeroed out
    if draw(st.booleans()):
        return b"ID3\x04\0\0\0\0\0\0" + data
    at = draw(st.integers(0, len(data) - 1))
    return data[:at] + bytes(min(417, len(data) - at)) + data[at + 417 :]


CORRUPTIONS = [truncate, flip_bytes, garbage_header, zero_length_chunk]


@st.composite
def corrupted(draw: Callable, clips: dict[str, bytes]) -> tuple[str, bytes, bool]:
    """(suffix, bytes, cut): one format's clip with one to three corruptions applied in turn; `cut`: the
    only corruption was a truncation that lost more than 5% of the file."""
    suffix = draw(st.sampled_from(sorted(clips)))
    data = clips[suffix]
    corruptions = draw(st.lists(st.sampled_from(CORRUPTIONS), min_size=1, max_size=3))
    for corruption in corruptions:
        if data:
            data = corruption(data, draw)
    cut = corruptions == [truncate] and len(data) < 0.95 * len(clips[suffix])
    return suffix, data, cut


# Formats whose header declares their length: a file cut short must be refused, not half transcribed.
DECLARED_LENGTH = {".wav", ".flac", ".mp3"}


@contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    def timed_out(signum: int, frame: object) -> None:
        raise TimeoutError(f"no result after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, timed_out)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def assert_one_line_of_ours(error: AudioLoadError, path: Path) -> None:
    message = str(error)
    assert message.startswith(f"{path}: "), message
    assert "\n" not in message and "\r" not in message, message


# --- the Python API -----------------------------------------------------------------------------------------


@fuzz_settings(300)
@given(data=st.data())
def test_fuzzed_files_load_or_are_refused_in_one_line(clips, tmp_path_factory, data):
    suffix, content, cut = data.draw(corrupted(clips))
    path = tmp_path_factory.mktemp("fuzz") / f"input{suffix}"
    path.write_bytes(content)
    with time_limit(TIME_LIMIT_S):
        try:
            samples = load_audio(path)
        except AudioLoadError as error:
            assert_one_line_of_ours(error, path)
            return
    assert not (cut and suffix in DECLARED_LENGTH), f"{suffix} cut to {len(content)} bytes was accepted"
    assert samples.dtype == np.float32 and samples.ndim == 1 and len(samples) > 0
    assert np.isfinite(samples).all() and np.abs(samples).max() <= MAX_FLOAT_PEAK


@fuzz_settings(8)
@given(data=st.data())
def test_fuzzed_files_transcribe_or_are_refused_in_one_line(clips, model, tmp_path_factory, data):
    suffix, content, _ = data.draw(corrupted(clips))
    path = tmp_path_factory.mktemp("fuzz") / f"input{suffix}"
    path.write_bytes(content)
    with time_limit(TIME_LIMIT_S):
        try:
            result = transcribe(model, path, draft="none")
        except AudioLoadError as error:
            assert_one_line_of_ours(error, path)
            return
    assert isinstance(result.text, str) and result.duration_s > 0


# --- the CLI's folder mode ----------------------------------------------------------------------------------


def our_lines_only(stderr: str) -> list[str]:
    """The `asr: ` lines of stderr; fails on anything else but the progress bar's redraws."""
    lines = []
    for piece in re.split(r"[\r\n]+", stderr):
        if piece.startswith("asr: "):
            lines.append(piece)
        else:
            assert not piece.strip() or "s audio" in piece, f"a line not ours on stderr: {piece!r}"
    return lines


@fuzz_settings(4)
@given(data=st.data())
def test_fuzzed_folder_reports_every_input_once(clips, model, tmp_path_factory, monkeypatch, capfd, data):
    monkeypatch.setattr(asr.models, "load_model", lambda *args, **kwargs: model)
    folder = tmp_path_factory.mktemp("fuzz")
    inputs = folder / "in"
    inputs.mkdir()
    names = []
    for index in range(data.draw(st.integers(2, 5))):
        suffix, content, _ = data.draw(corrupted(clips))
        names.append(f"{index}{suffix}")
        (inputs / names[-1]).write_bytes(content)
    good = sorted(clips)[index % len(clips)]
    names.append(f"intact{good}")
    (inputs / names[-1]).write_bytes(clips[good])
    capfd.readouterr()
    with time_limit(TIME_LIMIT_S * len(names)):
        options = ["--output-dir", str(folder / "out"), "--format", "txt", "--draft", "none"]
        code = cli.main(["transcribe", str(inputs), *options])
    out, err = capfd.readouterr()
    assert out == ""
    assert "Traceback" not in err and "internal error" not in err, err
    lines = our_lines_only(err)
    reports = [line for line in lines if line.startswith(("asr: ok ", "asr: FAILED "))]
    reported = [re.match(r"asr: (?:ok|FAILED) (.*?): ", line).group(1) for line in reports]
    assert sorted(reported) == sorted(str(inputs / name) for name in names), lines
    n_failed = sum(line.startswith("asr: FAILED ") for line in reports)
    summary = f"asr: {len(names)} files: {len(names) - n_failed} transcribed, 0 skipped (outputs exist), "
    assert any(line.startswith(summary + f"{n_failed} failed;") for line in lines), lines
    assert f"asr: ok {inputs / names[-1]}: " in err  # the intact clip goes through among broken ones
    assert code == (cli.EXIT_FAILED if n_failed else cli.EXIT_OK)
