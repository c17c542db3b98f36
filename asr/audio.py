"""Whisper's log-mel front end: named constants plus pure functions.

`log_mel_spectrogram` is Whisper's front end: a 25 ms periodic-Hann STFT every 10 ms, power spectrum, a Slaney
mel filterbank, log10, a dynamic-range floor 8 decades below the peak, then (x + 4) / 4.

Reading audio files and arrays into the 16 kHz float32 samples this module expects is `asr.audio_io`'s job.
"""

from __future__ import annotations

import functools
import math
import time

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


# Samples per STFT in `LogMelWindows` (~1 min): each call is big enough to run about as fast as one
# whole-input STFT (a few seconds per call ran 2-3x slower), and its temporaries stay small (twice this size
# left ~250 MB more of heap behind for a 3-h input).
MEL_BLOCK_SAMPLES = 1 << 20
# Frames per slab of `LogMelWindows`'s storage (~22 min): 42 MB with 80 mels, above glibc's largest mmap
# threshold (32 MB), so each slab is a mapping of its own. Kept results of a few MB each, allocated between
# freed STFT temporaries, had left the heap twice the log-mel's size, and never given back.
MEL_SLAB_FRAMES = 1 << 17


class LogMelWindows:
    """Whisper's log-mel of a whole recording, built block by block and read one window at a time.

    Equals `log_mel_spectrogram(samples, n_mels, padding)` frame for frame (to float32 rounding: the STFT
    and the filterbank product run per block, so a value may differ in its last bit), but never holds the
    samples, the STFT or the power spectrum of the whole recording (together ~5 GB for 4 h): feed it 16 kHz
    float32 blocks with `add` as they are decoded, call `finish`, then read `window(start)`. It keeps the
    log10 mel power before the dynamic-range floor (n_mels x 4 bytes per 10 ms: 0.46 GB for 4 h with 80
    mels) and each hop's peak sample, for the silence gate. The floor needs the loudest bin of the whole
    input, which is known only once the last block is in: hence the two steps.
    """

    def __init__(self, n_mels: int = 80, padding: int = 0, device: str | torch.device | None = None) -> None:
        if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
            raise InvalidOptionError(f"padding must be a non-negative number of samples, got {padding!r}")
        self.n_mels = n_mels
        self.padding = padding
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self._filters = mel_filters(n_mels).to(self.device)
        self._hann = torch.hann_window(N_FFT, periodic=True, device=self.device)
        self.n_samples = 0
        self.n_frames = 0  # frames computed so far; after `finish`: (n_samples + padding) // HOP_LENGTH
        self._head = torch.zeros(0, device=self.device)  # samples before the first frame could be made
        self._tail: torch.Tensor | None = None  # from the next frame's first sample on (reflect-padded input)
        self._slabs: list[torch.Tensor] = []  # un-floored log10 mel, shape = (n_mels, MEL_SLAB_FRAMES) each
        self._hop_peaks: list[np.ndarray] = []
        self._hop_rest = np.zeros(0, dtype=np.float32)  # samples of a hop not yet complete
        self._pending: list[np.ndarray] = []  # samples added but not yet turned into frames
        self._n_pending = 0
        self.ceiling = -math.inf  # the loudest log10 mel bin so far
        self.finished = False
        self.time_s = 0.0  # seconds spent in `add` and `finish`

    def add(self, samples: np.ndarray) -> None:
        """Append 16 kHz mono float32 samples; shape = (n,)."""
        assert not self.finished, "add after finish"
        started = time.perf_counter()
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        self._add_hop_peaks(samples)
        self.n_samples += samples.shape[0]
        self._pending.append(np.array(samples))
        self._n_pending += samples.shape[0]
        if self._n_pending >= MEL_BLOCK_SAMPLES:
            self._flush()
        self.time_s += time.perf_counter() - started

    def finish(self) -> LogMelWindows:
        """Append the padding, make the last frames and fix the floor; returns self."""
        if self.finished:
            return self
        started = time.perf_counter()
        if self._hop_rest.shape[0]:
            self._hop_peaks.append(np.abs(self._hop_rest).max(keepdims=True))
        n_total = self.n_samples + self.padding
        min_samples = N_FFT // 2 + 1  # reflect padding by N_FFT // 2 needs more samples than that
        if n_total < min_samples:
            raise AudioLoadError(
                f"{_ARRAY_NAME}: has {n_total} samples (padding included); the log-mel front end needs at "
                f"least {min_samples}"
            )
        if self.padding:  # with the input's last samples: a short clip takes one STFT, as the whole-input one
            self._pending.append(np.zeros(self.padding, dtype=np.float32))
        self._flush(last=True)
        # center=True yields n // HOP_LENGTH + 1 frames; Whisper drops the last so 30 s give exactly N_FRAMES.
        self.n_frames = n_total // HOP_LENGTH
        del self._slabs[-(-self.n_frames // MEL_SLAB_FRAMES) :]
        self.ceiling = max(
            (
                float(self._slice(start, min(start + MEL_SLAB_FRAMES, self.n_frames)).max())
                for start in range(0, self.n_frames, MEL_SLAB_FRAMES)
            ),
            default=-math.inf,
        )
        self._tail = None
        self.finished = True
        self.time_s += time.perf_counter() - started
        return self

    @property
    def n_content_frames(self) -> int:
        """Frames of the input itself, the padding's excluded: n_samples // HOP_LENGTH."""
        return self.n_samples // HOP_LENGTH

    def window(self, start: int, n_frames: int = N_FRAMES, *, padded_input: bool = False) -> torch.Tensor:
        """The encoder's input from frame `start`; shape = (n_mels, n_frames).

        By default (openai-whisper's `transcribe`, and faster-whisper's): the input's own frames in
        [start, start + n_frames), then zero frames, so a window that reaches past the end of the input
        (a short clip, the last window of a long one) ends in zeros, not in the log-mel of the padding.
        `padded_input=True`: the frames of the padded input, the padding's included (a short clip's
        log-mel as transformers' feature extractor makes it), zero-padded only past those. The two give
        the encoder different inputs, and the decoder can then write different tokens (issue #20).
        """
        assert self.finished, "window before finish"
        stop = self.n_frames if padded_input else min(self.n_content_frames, self.n_frames)
        log_mel = self._slice(start, max(min(start + n_frames, stop), start))
        log_mel = torch.maximum(log_mel, torch.tensor(self.ceiling - LOG_MEL_DYNAMIC_RANGE))
        return pad_or_trim((log_mel + 4.0) / 4.0, n_frames)

    def peak(self, start: int, n_frames: int) -> float:
        """The largest |sample| under frames [start, start + n_frames) (the input's hops; padding is 0)."""
        assert self.finished, "peak before finish"
        peaks = np.concatenate(self._hop_peaks) if len(self._hop_peaks) > 1 else None
        if peaks is not None:
            self._hop_peaks = [peaks]
        elif self._hop_peaks:
            peaks = self._hop_peaks[0]
        else:
            return 0.0
        return float(peaks[start : start + n_frames].max(initial=0.0))

    def _slice(self, start: int, stop: int) -> torch.Tensor:
        """Un-floored frames [start, stop) of the slabs; shape = (n_mels, stop - start)."""
        pieces = []
        position = start
        while position < stop:
            slab_index, offset = divmod(position, MEL_SLAB_FRAMES)
            n = min(stop - position, MEL_SLAB_FRAMES - offset)
            pieces.append(self._slabs[slab_index][:, offset : offset + n])
            position += n
        if len(pieces) == 1:
            return pieces[0]
        return torch.cat(pieces, dim=1) if pieces else self._filters.new_zeros(self.n_mels, 0)

    def _flush(self, last: bool = False) -> None:
        """Turn the pending samples into frames, `MEL_BLOCK_SAMPLES` at a time; `last`: the input ends."""
        if not self._pending and not last:
            return
        samples = np.concatenate(self._pending) if self._pending else np.zeros(0, dtype=np.float32)
        self._pending, self._n_pending = [], 0
        starts = range(0, samples.shape[0], MEL_BLOCK_SAMPLES) or range(1)
        for start in starts:
            block = torch.from_numpy(samples[start : start + MEL_BLOCK_SAMPLES]).to(self.device)
            self._push(block, last=last and start == starts[-1])

    def _add_hop_peaks(self, block: np.ndarray) -> None:
        samples = np.concatenate([self._hop_rest, block]) if self._hop_rest.shape[0] else block
        n_whole = samples.shape[0] // HOP_LENGTH * HOP_LENGTH
        if n_whole:
            self._hop_peaks.append(np.abs(samples[:n_whole]).reshape(-1, HOP_LENGTH).max(axis=1))
        self._hop_rest = np.array(samples[n_whole:], dtype=np.float32)

    def _push(self, samples: torch.Tensor, last: bool = False) -> None:
        if self._tail is None:
            self._head = torch.cat([self._head, samples])
            if self._head.shape[0] > N_FFT // 2 or last:
                self._start(self._head, last)
            return
        signal = torch.cat([self._tail, samples])
        self._frames(_end_reflected(signal) if last else signal)

    def _start(self, head: torch.Tensor, last: bool) -> None:
        """The input's start, reflected (as torch.stft(center=True) pads), then its first frames."""
        pad = N_FFT // 2
        signal = torch.cat([head[1 : pad + 1].flip(0), head])
        self._head = torch.zeros(0, device=self.device)
        self._tail = torch.zeros(0, device=self.device)
        self._frames(_end_reflected(signal) if last else signal)

    def _frames(self, signal: torch.Tensor) -> None:
        """Make every frame that `signal` (from the next frame's start) holds; keep the rest as the tail."""
        n_new = (signal.shape[0] - N_FFT) // HOP_LENGTH + 1 if signal.shape[0] >= N_FFT else 0
        if n_new > 0:
            # The kept result is allocated before the temporaries: freed, they leave one hole at the heap's
            # top, not one between every two kept chunks (which made the heap twice the log-mel's size).
            used = signal[: (n_new - 1) * HOP_LENGTH + N_FFT]
            stft = torch.stft(used, N_FFT, HOP_LENGTH, window=self._hann, center=False, return_complex=True)
            mel = self._filters @ stft.abs().square()  # shape = (n_mels, n_new)
            log_mel = torch.clamp(mel, min=LOG_MEL_FLOOR).log10()
            done = 0
            while done < n_new:  # into the slabs, starting new ones as they fill
                slab_index, offset = divmod(self.n_frames, MEL_SLAB_FRAMES)
                if slab_index == len(self._slabs):
                    self._slabs.append(torch.empty(self.n_mels, MEL_SLAB_FRAMES, device=self.device))
                n = min(n_new - done, MEL_SLAB_FRAMES - offset)
                self._slabs[slab_index][:, offset : offset + n] = log_mel[:, done : done + n]
                done += n
                self.n_frames += n
        self._tail = signal[n_new * HOP_LENGTH :].clone()


def _end_reflected(signal: torch.Tensor) -> torch.Tensor:
    """`signal` and its last N_FFT // 2 samples reflected: what torch.stft(center=True) appends."""
    return torch.cat([signal, signal[-(N_FFT // 2) - 1 : -1].flip(0)])


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
