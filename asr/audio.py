"""Whisper's log-mel front end: named constants plus pure functions.

`log_mel_spectrogram` is Whisper's front end: a 25 ms periodic-Hann STFT every 10 ms, power spectrum, a Slaney
mel filterbank, log10, a dynamic-range floor 8 decades below the peak, then (x + 4) / 4.

Reading audio files and arrays into the 16 kHz float32 samples this module expects is `asr.audio_io`'s job.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from asr.errors import AudioLoadError, InvalidOptionError

SAMPLE_RATE = 16000  # Hz; every Whisper model was trained on 16 kHz audio
N_FFT = 400  # STFT window: 25 ms at 16 kHz
HOP_LENGTH = 160  # STFT hop: 10 ms at 16 kHz, so 100 mel frames per second
CHUNK_LENGTH = 30  # seconds of audio in one encoder window
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000 samples in one 30-s window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames in one 30-s window (the encoder's input length)
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100 mel frames per second
N_SAMPLES_PER_TOKEN = HOP_LENGTH * 2  # the encoder's stride-2 conv: one audio position per 2 mel frames
TIME_PRECISION = N_SAMPLES_PER_TOKEN / SAMPLE_RATE  # 0.02 s between consecutive timestamp tokens

MEL_FMIN = 0.0  # Hz; lowest edge of the first mel filter
MEL_FMAX = SAMPLE_RATE / 2  # Hz; 8000, the Nyquist frequency, top edge of the last mel filter
LOG_MEL_FLOOR = 1e-10  # mel power clamp before log10, so silence gives -10 rather than -inf
LOG_MEL_DYNAMIC_RANGE = 8.0  # decades kept below the loudest mel bin; quieter bins are raised to that floor

_ARRAY_NAME = "<array>"


@functools.lru_cache(maxsize=8)  # n_mels is 80 or 128 in practice
def mel_filters(n_mels: int) -> torch.Tensor:
    """Slaney-style mel filterbank for Whisper's STFT; shape = (n_mels, N_FFT // 2 + 1), float32.

    Triangles evenly spaced on the Slaney mel scale (linear below 1 kHz, logarithmic above) from `MEL_FMIN`
    to `MEL_FMAX`, each scaled to unit area (Slaney normalisation): what librosa.filters.mel(sr=16000,
    n_fft=400) returns and what Whisper ships. Whisper uses n_mels = 80 (tiny ... large-v2) or 128 (large-v3).
    The result is cached and shared between callers: treat it as read-only.
    """
    if isinstance(n_mels, bool) or not isinstance(n_mels, int) or n_mels < 1:
        raise InvalidOptionError(
            f"n_mels must be a positive integer (Whisper uses 80 or 128), got {n_mels!r}"
        )
    n_freqs = N_FFT // 2 + 1
    fft_freqs = np.linspace(0.0, SAMPLE_RATE / 2, n_freqs)  # Hz of each STFT bin
    mel_edges = np.linspace(_hz_to_mel(MEL_FMIN), _hz_to_mel(MEL_FMAX), n_mels + 2)
    hz_edges = _mel_to_hz(mel_edges)  # lower edge, centre, upper edge of filter i: hz_edges[i : i + 3]
    widths = np.diff(hz_edges)
    distance = hz_edges[:, None] - fft_freqs[None, :]  # shape = (n_mels + 2, n_freqs)
    rising = -distance[:-2] / widths[:-1, None]
    falling = distance[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (hz_edges[2:] - hz_edges[:-2]))[:, None]  # Slaney: every triangle has unit area
    return torch.from_numpy(weights.astype(np.float32))


def log_mel_spectrogram(
    audio: np.ndarray | torch.Tensor,
    n_mels: int = 80,
    padding: int = 0,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Whisper's log-mel spectrogram of 16 kHz mono audio; shape = (n_mels, n_frames), float32.

    audio: shape = (n_samples,), float samples at `SAMPLE_RATE`.
    padding: zero samples appended before the STFT; transcription appends N_SAMPLES so that the last 30-s
        window is complete. n_frames = (n_samples + padding) // HOP_LENGTH.
    device: where to compute (default: where `audio` is; CPU for numpy input).

    The dynamic-range floor is relative to the loudest bin of the whole input, so a spectrogram of a long
    recording is not the concatenation of its pieces' spectrograms.
    """
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise InvalidOptionError(f"padding must be a non-negative number of samples, got {padding!r}")
    filters = mel_filters(n_mels)
    if isinstance(audio, torch.Tensor):
        samples = audio
    else:
        array = np.asarray(audio)
        if array.dtype.kind != "f":
            raise AudioLoadError(
                f"{_ARRAY_NAME}: log-mel input must be float samples (see load_audio); got {array.dtype}"
            )
        # torch.from_numpy shares memory and refuses read-only arrays; copy only when needed.
        array = np.ascontiguousarray(array, dtype=np.float32)
        samples = torch.from_numpy(array if array.flags.writeable else array.copy())
    if samples.ndim != 1:
        raise AudioLoadError(
            f"{_ARRAY_NAME}: log-mel input must be mono, shape (n_samples,); got {tuple(samples.shape)}"
        )
    if not samples.is_floating_point():
        raise AudioLoadError(
            f"{_ARRAY_NAME}: log-mel input must be float samples (see load_audio); got {samples.dtype}"
        )
    samples = samples.to(device=device, dtype=torch.float32)
    if padding:
        samples = F.pad(samples, (0, padding))
    min_samples = N_FFT // 2 + 1  # reflect padding by N_FFT // 2 needs more samples than that
    if samples.shape[0] < min_samples:
        raise AudioLoadError(
            f"{_ARRAY_NAME}: has {samples.shape[0]} samples (padding included); the log-mel front end needs "
            f"at least {min_samples}"
        )
    window = torch.hann_window(N_FFT, periodic=True, device=samples.device)
    stft = torch.stft(
        samples, N_FFT, HOP_LENGTH, window=window, center=True, pad_mode="reflect", return_complex=True
    )
    # center=True yields n // HOP_LENGTH + 1 frames; Whisper drops the last so 30 s give exactly N_FRAMES.
    power = stft[:, :-1].abs().square()  # shape = (N_FFT // 2 + 1, n_frames)
    mel = filters.to(samples.device) @ power  # shape = (n_mels, n_frames)
    log_mel = torch.clamp(mel, min=LOG_MEL_FLOOR).log10()
    log_mel = torch.maximum(log_mel, log_mel.max() - LOG_MEL_DYNAMIC_RANGE)
    return (log_mel + 4.0) / 4.0  # Whisper's fixed scaling to roughly [-1, 1]


def pad_or_trim(array: torch.Tensor, length: int = N_FRAMES, axis: int = -1) -> torch.Tensor:
    """Zero-pad or cut `array` along `axis` to exactly `length` (default N_FRAMES, one 30-s mel window).

    Shape: `array.shape` with `shape[axis] = length`. A trimmed result is a view of `array`.
    """
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise InvalidOptionError(f"length must be a non-negative integer, got {length!r}")
    axis = axis % array.ndim if array.ndim else axis
    current = array.shape[axis]
    if current >= length:
        return array.narrow(axis, 0, length)
    # F.pad takes (before, after) pairs starting from the last axis.
    widths = [0, 0] * (array.ndim - 1 - axis) + [0, length - current]
    return F.pad(array, widths)


# --- helpers ------------------------------------------------------------------------------------------------

_SLANEY_HZ_PER_MEL = 200.0 / 3  # below the break the scale is linear: 66.7 Hz per mel
_SLANEY_BREAK_HZ = 1000.0  # where the scale turns logarithmic
_SLANEY_BREAK_MEL = _SLANEY_BREAK_HZ / _SLANEY_HZ_PER_MEL  # 15 mels
_SLANEY_LOGSTEP = math.log(6.4) / 27.0  # above the break, 27 mels span a factor of 6.4 (1 kHz -> 6.4 kHz)


def _hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """Slaney's mel scale (Auditory Toolbox): linear 200/3 Hz per mel up to 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / _SLANEY_HZ_PER_MEL
    logarithmic = (
        _SLANEY_BREAK_MEL + np.log(np.maximum(hz, _SLANEY_BREAK_HZ) / _SLANEY_BREAK_HZ) / _SLANEY_LOGSTEP
    )
    return np.where(hz >= _SLANEY_BREAK_HZ, logarithmic, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """Inverse of `_hz_to_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * _SLANEY_HZ_PER_MEL
    logarithmic = _SLANEY_BREAK_HZ * np.exp(_SLANEY_LOGSTEP * (mel - _SLANEY_BREAK_MEL))
    return np.where(mel >= _SLANEY_BREAK_MEL, logarithmic, linear)
