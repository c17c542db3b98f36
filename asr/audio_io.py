"""Reading audio robustly: a path, encoded bytes or a numpy array -> float32 mono samples at 16 kHz.

`load_audio` turns a path, encoded bytes or a numpy array into what every Whisper model expects: float32 mono
samples at 16 kHz. Files are decoded with libsndfile (through soundfile) block by block, averaged to mono and
resampled with soxr's "HQ" quality (librosa's default resampler) as they stream, so a long 44.1 kHz stereo
file never sits in memory at its source rate. Every unusable input raises `AudioLoadError` with a one-line
message that starts with the input's name.

Whisper's log-mel front end and its constants live in `asr.audio`; this module changes when file formats,
decoders or input checks do.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import stat
import struct
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr

from asr.audio import SAMPLE_RATE
from asr.errors import AudioLoadError, InvalidOptionError

logger = logging.getLogger(__name__)

DEFAULT_MAX_DURATION_S = 4 * 3600  # longer inputs are refused: 4 h at 16 kHz is already ~0.9 GB of float32

# Suffixes this build of libsndfile (1.2, with mpg123 and opus) decodes; tests/test_audio.py round-trips each.
# libsndfile sniffs the format from the content, so the suffix only serves to pick files out of a folder.
AUDIO_EXTENSIONS = frozenset(
    {
        ".wav",
        ".wave",
        ".flac",
        ".mp3",
        ".ogg",
        ".oga",
        ".opus",
        ".aiff",
        ".aif",
        ".aifc",
        ".caf",
        ".au",
        ".snd",
        ".w64",
        ".rf64",
    }
)

MAX_ARRAY_CHANNELS = 8  # a 2-D array axis this short (and shorter than the other) is read as channels
DECODE_BLOCK_FRAMES = 1 << 18  # frames per libsndfile read: ~6 s at 44.1 kHz, bounds peak memory
# Float samples are full scale at 1.0; a peak above this (+24 dBFS) is not a level any recorder or float file
# produces, but integer samples cast to float (int16 values: up to 32767) are. Such input used to transcribe
# to "" without a word: refused, not rescaled, because whether the full scale is 2**15, 2**23 or 2**31 is a
# guess only the caller can settle, in one division.
MAX_FLOAT_PEAK = 16.0
SOXR_QUALITY = "HQ"  # soxr's high quality; librosa's default res_type "soxr_hq" is the same setting
# Formats whose header length is an estimate, not a count: libsndfile guesses an MP3 without a Xing/Info frame
# from its file size (ID3 cover art counts as audio), so it can be far too long. No early duration check on
# these, and a short decode only logs a warning.
_ESTIMATED_LENGTH_FORMATS = frozenset({"MP3"})
TRUNCATION_TOLERANCE = 0.01  # a decode this much (fraction) shorter than its header declares is truncated
# WAV writers that cannot seek back to fix the header leave a placeholder data size: 0, 0xFFFFFFFF, or a big
# round value such as 0x7FFFF000. libsndfile then reads to the end of the file, and so do we.
_WAV_PLACEHOLDER_MIN_SIZE = 0x7FFF0000
_WAV_MAX_CHUNKS_SCANNED = 64  # fmt, fact, LIST, bext, JUNK...: a real header has a handful

_BYTES_NAME = "<bytes>"
_ARRAY_NAME = "<array>"

AudioSource = str | os.PathLike | bytes | bytearray | memoryview | np.ndarray


MAX_SAMPLE_RATE = 768_000  # the highest rate audio interfaces record at


def load_audio(
    source: AudioSource,
    *,
    sample_rate: int | None = None,
    max_duration_s: float | None = DEFAULT_MAX_DURATION_S,
    name: str | None = None,
) -> np.ndarray:
    """Read audio as float32 mono at `SAMPLE_RATE` (16 kHz); shape = (n_samples,).

    The whole recording in one array (4 bytes per sample: 0.9 GB for 4 h). `stream_audio` gives the same
    samples block by block, for callers that need not hold them all. Arguments and errors: see there.
    """
    blocks = list(stream_audio(source, sample_rate=sample_rate, max_duration_s=max_duration_s, name=name))
    if len(blocks) == 1:
        return blocks[0]
    return np.concatenate(blocks)


def stream_audio(
    source: AudioSource,
    *,
    sample_rate: int | None = None,
    max_duration_s: float | None = DEFAULT_MAX_DURATION_S,
    name: str | None = None,
) -> Iterator[np.ndarray]:
    """The samples of `load_audio`, float32 mono at 16 kHz, in consecutive blocks; shape = (n_block,) each.

    A file is decoded and resampled as it is read (a block is at most a few seconds), so memory stays bounded
    whatever the file's length; an array comes back as one block. The path and a declared length the file
    does not hold are checked at once; what the decoder finds (an unknown format, corrupt data, a short
    decode, NaN samples) raises while iterating, at the latest after the last block, so a consumer must not
    treat earlier blocks as final.

    source: a path to any file libsndfile decodes (see `AUDIO_EXTENSIONS`), the bytes of such a file, or
        samples in a numpy array. Array layout: shape (n,) is mono; a 2-D array has a channel axis, which is
        the axis of length <= `MAX_ARRAY_CHANNELS` (8) that is shorter than the other: (n, channels) or
        (channels, n); an axis of length 1 is always the channel axis. Integer arrays are scaled to [-1, 1)
        (uint8 is offset by 128, as in 8-bit WAV); float arrays are taken as they are. Channels are averaged.
    sample_rate: the array's sample rate in Hz (default 16000). For arrays only: a file's header gives its
        rate.
    max_duration_s: refuse audio longer than this many seconds (None: no limit). Checked from the header
        before decoding when the header's length is exact, so a huge file fails at once.
    name: what error messages call the input (default: the path as given, "<bytes>" or "<array>").

    Raises AudioLoadError, whose message is one line "<name>: <reason>", for a missing path, a directory, an
    unreadable, empty, non-audio, truncated or corrupt file, no samples, NaN/inf samples, float samples far
    outside [-1, 1] (see `MAX_FLOAT_PEAK`), or too long a duration; InvalidOptionError for a bad `sample_rate`
    or `max_duration_s`.
    """
    if max_duration_s is not None and not (max_duration_s > 0):
        raise InvalidOptionError(
            f"max_duration_s must be a positive number of seconds or None, got {max_duration_s}"
        )
    if isinstance(source, np.ndarray):
        label = _ARRAY_NAME if name is None else name
        rate = SAMPLE_RATE if sample_rate is None else sample_rate
        _check_sample_rate(rate)
        return iter([_load_array(source, rate, max_duration_s, label)])
    if sample_rate is not None:
        raise InvalidOptionError(
            "sample_rate applies to numpy array input only; a file's or bytes' own header gives its rate"
        )
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = _BYTES_NAME if name is None else name
        data = bytes(source)
        if not data:
            raise AudioLoadError(f"{label}: is empty (0 bytes)")
        _check_not_truncated(io.BytesIO(data), len(data), label)
        return _decode(lambda: sf.SoundFile(io.BytesIO(data)), max_duration_s, label)
    if isinstance(source, (str, os.PathLike)):
        path = os.fsdecode(os.fspath(source))
        label = path if name is None else name
        _check_readable_audio_file(path, label)
        return _decode(lambda: sf.SoundFile(path), max_duration_s, label)
    label = type(source).__name__ if name is None else name
    raise AudioLoadError(
        f"{label}: unsupported input type {type(source).__name__}; expected a path, bytes or a numpy array"
    )


def audio_duration(path: str | os.PathLike) -> float:
    """Duration in seconds read from the file's header, without decoding (cheap: for a progress-bar total).

    Exact for most formats; an estimate from the file size for an MP3 without a Xing/Info frame.
    Raises AudioLoadError ("<path>: <reason>") like `load_audio`.
    """
    label = os.fsdecode(os.fspath(path))
    _check_readable_audio_file(label, label)
    try:
        with _without_mpg123_messages():
            info = sf.info(label)
    except Exception as error:
        raise AudioLoadError(f"{label}: {_open_failure_reason(error)}") from error
    if info.samplerate <= 0:
        raise AudioLoadError(f"{label}: header gives an invalid sample rate ({info.samplerate} Hz)")
    return info.frames / info.samplerate


# --- helpers ------------------------------------------------------------------------------------------------


def _check_sample_rate(rate: object) -> None:
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
        raise InvalidOptionError(f"sample_rate must be a positive integer number of Hz, got {rate!r}")


def _one_line(text: object) -> str:
    """Collapse whitespace so a library message (libsndfile's can span lines) fits a one-line report."""
    return " ".join(str(text).split()).rstrip(".")


def _check_readable_audio_file(path: str, label: str) -> None:
    """Fail on what is wrong with a path before libsndfile sees it; libsndfile's own messages are vaguer."""
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError) as error:
        if os.path.islink(path):
            raise AudioLoadError(f"{label}: is a broken symbolic link (its target does not exist)") from error
        raise AudioLoadError(f"{label}: no such file") from error
    except PermissionError as error:
        raise AudioLoadError(f"{label}: permission denied") from error
    except (OSError, ValueError) as error:  # ValueError: an embedded NUL byte
        reason = getattr(error, "strerror", None) or _one_line(error)  # ELOOP: "Too many levels of ..."
        raise AudioLoadError(f"{label}: cannot be accessed ({reason})") from error
    if stat.S_ISDIR(info.st_mode):
        raise AudioLoadError(f"{label}: is a directory, expected an audio file")
    if not stat.S_ISREG(info.st_mode):
        raise AudioLoadError(
            f"{label}: is not a regular file (the decoder needs to seek; save the stream first)"
        )
    if info.st_size == 0:
        raise AudioLoadError(f"{label}: is empty (0 bytes)")
    try:
        with open(path, "rb") as stream:
            _check_not_truncated(stream, info.st_size, label)
    except PermissionError as error:
        raise AudioLoadError(f"{label}: permission denied") from error
    except OSError as error:
        raise AudioLoadError(f"{label}: cannot be read ({_one_line(error)})") from error


def _check_not_truncated(stream: BinaryIO, size: int, label: str) -> None:
    """Raise if the file is shorter than its header declares (WAV data chunk, MP3 Xing/Info frame)."""
    _check_wav_not_truncated(stream, size, label)
    stream.seek(0)
    _check_mp3_not_truncated(stream, size, label)


# MPEG audio layer III (mp3), from the frame header's bits: sample rates by version and rate index, and the
# side information's length, after which an encoder (LAME, libsndfile) puts its Xing or Info frame.
_MPEG_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}  # MPEG 1, 2, 2.5
# keyed by (MPEG 1, mono)
_MPEG_SIDE_INFO = {(True, True): 17, (True, False): 32, (False, True): 9, (False, False): 17}
_XING_FLAG_FRAMES, _XING_FLAG_BYTES = 1, 2


def _check_mp3_not_truncated(stream: BinaryIO, size: int, label: str) -> None:
    """Raise if an MP3 holds fewer bytes than its Xing/Info frame declares (a cut-off copy or download).

    libmpg123 decodes what is there and only warns ("Xing stream size off"), so half a file used to give
    half a transcript. Compared with the whole file's size (ID3 tags included), which errs towards accepting.
    An MP3 without a Xing/Info frame declares no length: a cut one is indistinguishable from a shorter one.
    """
    head = stream.read(10)
    offset = 0
    if len(head) == 10 and head[:3] == b"ID3":  # ID3v2: a 10-byte header, a syncsafe size, maybe a footer
        offset = 10 + sum((byte & 0x7F) << (7 * (3 - i)) for i, byte in enumerate(head[6:10]))
        offset += 10 if head[5] & 0x10 else 0
    stream.seek(offset)
    frame = stream.read(4 + 32 + 16)
    if len(frame) < 4 + 9 + 16 or frame[0] != 0xFF or frame[1] & 0xE0 != 0xE0:
        return
    version, layer = (frame[1] >> 3) & 3, (frame[1] >> 1) & 3
    rate_index, mono = (frame[2] >> 2) & 3, (frame[3] >> 6) == 3
    if layer != 1 or version not in _MPEG_RATES or rate_index == 3:  # layer bits 01 are layer III
        return
    tag = 4 + _MPEG_SIDE_INFO[(version == 3, mono)]
    if frame[tag : tag + 4] not in (b"Xing", b"Info"):
        return
    flags = struct.unpack(">I", frame[tag + 4 : tag + 8])[0]
    fields = frame[tag + 8 :]
    n_frames = struct.unpack(">I", fields[:4])[0] if flags & _XING_FLAG_FRAMES else 0
    if not flags & _XING_FLAG_BYTES:
        return
    declared = struct.unpack(">I", fields[4:8] if flags & _XING_FLAG_FRAMES else fields[:4])[0]
    if declared == 0 or size >= declared * (1 - TRUNCATION_TOLERANCE):
        return
    seconds = ""
    if n_frames:
        declared_s = n_frames * (1152 if version == 3 else 576) / _MPEG_RATES[version][rate_index]
        seconds = f"{declared_s:.1f} s of audio in "
    raise AudioLoadError(
        f"{label}: is truncated: its header declares {seconds}{declared} bytes but the file holds {size}"
    )


def _check_wav_not_truncated(stream: BinaryIO, size: int, label: str) -> None:
    """Raise if a RIFF/WAVE file holds less sample data than its header declares.

    libsndfile silently decodes whatever part of a cut-off WAV is present (a half-copied file comes back as
    half the audio), so compare the data chunk's declared size with the bytes actually there. Other formats
    are left to libsndfile, which either reports them corrupt or (MP3) to the decoded-length check.
    """
    riff = stream.read(12)
    if len(riff) < 12 or riff[:4] != b"RIFF" or riff[8:12] != b"WAVE":
        return
    position = 12
    block_align = 0
    for _ in range(_WAV_MAX_CHUNKS_SCANNED):
        stream.seek(position)
        header = stream.read(8)
        if len(header) < 8:
            return  # no data chunk: libsndfile reports that itself
        chunk_id, declared = header[:4], struct.unpack("<I", header[4:])[0]
        if chunk_id == b"fmt " and declared >= 14:
            fmt = stream.read(14)
            block_align = struct.unpack("<H", fmt[12:14])[0] if len(fmt) == 14 else 0
        if chunk_id == b"data":
            present = size - position - 8
            if declared == 0 or declared >= _WAV_PLACEHOLDER_MIN_SIZE or present >= declared:
                return
            if block_align > 0:
                raise AudioLoadError(
                    f"{label}: is truncated: its header declares {declared // block_align} sample frames but "
                    f"the file holds {present // block_align}"
                )
            raise AudioLoadError(
                f"{label}: is truncated: its header declares {declared} bytes of audio but the file holds "
                f"{present}"
            )
        position += 8 + declared + (declared & 1)  # chunks are word-aligned
        if position >= size:
            return


def _decoder_detail(error: BaseException) -> str:
    """A decoder's complaint on one line, without libsndfile's "Error opening '<path>':" prefix."""
    if isinstance(error, MemoryError):
        return "not enough memory to decode it"
    detail = _one_line(getattr(error, "error_string", None) or str(error) or type(error).__name__)
    return detail.removeprefix("Error : ")


def _open_failure_reason(error: BaseException) -> str:
    """Why libsndfile could not open an input that exists and is readable."""
    detail = _decoder_detail(error)
    # The path was checked first, so libsndfile's "File does not exist or is not a regular file" is its mpg123
    # front end's way of saying it recognises no format in the content.
    if detail.startswith("File does not exist or is not a regular file") or detail == "Format not recognised":
        return "is not a recognised audio format (or is corrupt)"
    return f"cannot be decoded as audio ({detail})"


# A message of libmpg123's own: "[src/libmpg123/parse.c:do_readahead():1083] warning: ..." (the source path
# depends on the build).
# libmpg123 also writes a few lines without that prefix, all of them "Warning: ..." or "Note: ..." (e.g.
# "Warning: Xing stream size off by more than 1%, fuzzy seeking may be even more fuzzy than by design!").
_MPG123_MESSAGE = re.compile(r"(?m)(?:\[[^\]\n]*libmpg123/[^\]\n]*\]|^(?:Warning|Note): )[^\n]*\n?")
_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def _without_mpg123_messages() -> Iterator[None]:
    """Keep libmpg123's messages off the process's stderr while libsndfile sniffs a file's format.

    libsndfile tries its MP3 decoder on bytes it does not recognise, and libmpg123 then writes warnings
    straight to file descriptor 2 (not through Python): a user would see them beside our one-line error.
    Meanwhile fd 2 goes to a temporary file; whatever else was written there (another thread's output) is
    written back, libmpg123's messages go to the debug log. One sniff at a time: they are short.
    """
    with _STDERR_LOCK, tempfile.TemporaryFile() as captured:
        try:
            saved = os.dup(2)
        except OSError:  # no fd 2 at all: nothing to keep clean
            yield
            return
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode(errors="replace")
            for message in _MPG123_MESSAGE.findall(text):
                logger.debug("libmpg123: %s", message.strip())
            rest = _MPG123_MESSAGE.sub("", text)
            if rest:
                os.write(2, rest.encode())


def _decode(
    open_file: Callable[[], sf.SoundFile], max_duration_s: float | None, label: str
) -> Iterator[np.ndarray]:
    """Decode a libsndfile-readable input block by block to float32 mono 16 kHz; shape = (n_block,) each."""
    try:
        with _without_mpg123_messages():
            sound = open_file()
    except Exception as error:
        raise AudioLoadError(f"{label}: {_open_failure_reason(error)}") from error
    with sound:
        rate, n_channels, header_frames = sound.samplerate, sound.channels, sound.frames
        if rate <= 0 or n_channels <= 0 or rate > MAX_SAMPLE_RATE:
            # a rate past any recorder's is a corrupt header (its samples would resample to nothing)
            raise AudioLoadError(f"{label}: header gives {n_channels} channels at {rate} Hz")
        length_is_exact = sound.format not in _ESTIMATED_LENGTH_FORMATS
        if length_is_exact and max_duration_s is not None:
            _check_duration(header_frames / rate, max_duration_s, label)
        # Streamed soxr output equals one-shot `soxr.resample` on the whole signal, sample for sample.
        resampler = None
        if rate != SAMPLE_RATE:
            resampler = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality=SOXR_QUALITY)
        n_decoded = 0
        blocks = _blocks(sound)
        while True:
            try:
                block = next(blocks, None)
                if block is None:
                    break
                _check_samples(block, n_decoded, rate, label)
                n_decoded += block.shape[0]
                if max_duration_s is not None:
                    _check_duration(n_decoded / rate, max_duration_s, label, partial=True)
                if resampler is not None:
                    block = resampler.resample_chunk(block)
            except AudioLoadError:
                raise
            except Exception as error:
                detail = _decoder_detail(error)
                raise AudioLoadError(f"{label}: is corrupt or truncated ({detail})") from error
            if block.shape[0]:
                yield block
        if n_decoded == 0:
            raise AudioLoadError(f"{label}: contains no audio samples")
        _check_decoded_length(n_decoded, header_frames, rate, length_is_exact, label)
        if resampler is not None:
            yield resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)


def _blocks(sound: sf.SoundFile) -> Iterator[np.ndarray]:
    """Mono float32 blocks until the decoder stops; shape = (n_block,).

    Reads into a buffer rather than `sound.read(-1)`, which stops at the header's frame count: an estimate
    for some MP3s that can be shorter than the audio.
    """
    buffer = np.empty((DECODE_BLOCK_FRAMES, sound.channels), dtype=np.float32)
    while True:
        with _without_mpg123_messages():  # libmpg123 also complains about bad frames while decoding
            block = sound.read(out=buffer)
        if block.shape[0] == 0:
            return
        yield block.mean(axis=1, dtype=np.float32) if sound.channels > 1 else block[:, 0].copy()


def _check_duration(duration_s: float, max_duration_s: float, label: str, *, partial: bool = False) -> None:
    """Raise if too long; `partial`: only part of the input is decoded yet, so its length is a lower bound."""
    if duration_s > max_duration_s:
        length = f"at least {duration_s:.1f} s" if partial else f"{duration_s:.1f} s"
        raise AudioLoadError(
            f"{label}: is {length} long; the maximum is {max_duration_s:g} s "
            "(set max_duration_s / --max-duration)"
        )


def _check_samples(block: np.ndarray, n_before: int, rate: int, label: str) -> None:
    """Raise on NaN or infinite float samples, or on float samples far outside [-1, 1]."""
    finite = np.isfinite(block)
    if not finite.all():
        first = n_before + int(np.argmin(finite))
        raise AudioLoadError(f"{label}: contains NaN or infinite samples (the first at {first / rate:.3f} s)")
    peak = float(np.abs(block).max(initial=0.0))
    if peak > MAX_FLOAT_PEAK:
        raise AudioLoadError(
            f"{label}: float samples reach {peak:.6g}, far outside [-1, 1]; integers stored as floats? "
            "divide them by their full scale (32768 for 16-bit) or pass the integer array itself"
        )


def _check_decoded_length(n_decoded: int, header_frames: int, rate: int, exact: bool, label: str) -> None:
    """A decode that ends well before the header's length means a cut-off file (e.g. an interrupted copy)."""
    if header_frames <= 0 or n_decoded >= header_frames * (1 - TRUNCATION_TOLERANCE):
        return
    message = (
        f"{label}: decoded {n_decoded / rate:.2f} s of the {header_frames / rate:.2f} s its header declares"
    )
    if exact:
        raise AudioLoadError(f"{message}; the file is truncated or corrupt")
    logger.warning("%s; it may be truncated (the header's length is an estimate for this format)", message)


def _load_array(array: np.ndarray, rate: int, max_duration_s: float | None, label: str) -> np.ndarray:
    """Validate and convert samples in memory to float32 mono 16 kHz; shape = (n_samples,)."""
    samples = _to_float(array, label)
    samples = _to_mono(samples, label)
    if samples.shape[0] == 0:
        raise AudioLoadError(f"{label}: contains no audio samples")
    _check_samples(samples, 0, rate, label)
    if max_duration_s is not None:
        _check_duration(samples.shape[0] / rate, max_duration_s, label)
    if rate != SAMPLE_RATE:
        samples = soxr.resample(samples, rate, SAMPLE_RATE, quality=SOXR_QUALITY)
    return np.array(samples, dtype=np.float32, copy=True)  # never hand back (a view of) the caller's array


def _to_float(array: np.ndarray, label: str) -> np.ndarray:
    """Samples as float32: signed integers divided by 2**(bits - 1), unsigned centred first."""
    kind = array.dtype.kind
    if kind == "f":
        return array.astype(np.float32, copy=False)
    if kind == "i":
        return (array / float(2 ** (8 * array.dtype.itemsize - 1))).astype(np.float32)
    if kind == "u":
        half = float(2 ** (8 * array.dtype.itemsize - 1))
        return ((array.astype(np.float64) - half) / half).astype(np.float32)
    raise AudioLoadError(f"{label}: unsupported sample dtype {array.dtype}; expected integers or floats")


def _to_mono(samples: np.ndarray, label: str) -> np.ndarray:
    """Average the channel axis of a 2-D array (see `load_audio` for how it is chosen); shape = (n,)."""
    if samples.ndim == 1:
        return samples
    if samples.ndim != 2:
        raise AudioLoadError(
            f"{label}: expected shape (n,), (n, channels) or (channels, n), got {samples.shape}"
        )
    n_rows, n_cols = samples.shape
    if n_cols == 1 or (n_cols <= MAX_ARRAY_CHANNELS and n_cols < n_rows):
        return samples.mean(axis=1, dtype=np.float32)
    if n_rows == 1 or (n_rows <= MAX_ARRAY_CHANNELS and n_rows < n_cols):
        return samples.mean(axis=0, dtype=np.float32)
    raise AudioLoadError(
        f"{label}: cannot tell channels from samples in shape {samples.shape}; expected (n,), (n, channels) "
        f"or (channels, n) with at most {MAX_ARRAY_CHANNELS} channels, fewer than samples"
    )
