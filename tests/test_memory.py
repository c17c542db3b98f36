"""Peak memory of a long recording: the model plus a bounded buffer, not a copy of the audio per stage.

Issue #19: a 3-h silent 16-kHz FLAC peaked at 6.2 GB RSS with base (the samples, their concatenation and
a whole-input STFT). Now the file is decoded block by block into the log-mel (`asr.audio.LogMelWindows`), so
what grows with the duration is 80 floats per 10 ms (0.35 GB for 3 h). Measured in a subprocess of its own,
which reports its own high-water mark (VmHWM), so no other test's memory counts.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO_ROOT = Path(__file__).resolve().parent.parent
PEAK_LIMIT_BYTES = 1.5e9  # issue #19: under 1.5 GB with base for a multi-hour file

CHILD = """
import sys
from asr.models import load_model
from asr.transcribe import transcribe

result = transcribe(load_model("base"), sys.argv[1], draft="self")
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print(repr(result.text), result.duration_s, int(status["VmHWM"].split()[0]) * 1024)
"""


def silent_flac(path: Path, hours: float) -> Path:
    """A silent 16-kHz 16-bit FLAC, written 10 min at a time (FLAC keeps silence to a few hundred kB)."""
    n_samples = int(hours * 3600 * 16000)
    block = np.zeros(16000 * 600, dtype=np.int16)
    with sf.SoundFile(path, "w", 16000, 1, subtype="PCM_16", format="FLAC") as sound:
        for start in range(0, n_samples, len(block)):
            sound.write(block[: min(len(block), n_samples - start)])
    return path


@pytest.mark.slow
def test_peak_memory_of_a_three_hour_file_stays_under_1_5_gb(tmp_path):
    path = silent_flac(tmp_path / "silence.flac", hours=3)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(path)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    text, duration_s, peak_bytes = done.stdout.split()
    assert text == "''" and float(duration_s) == 3 * 3600
    assert int(peak_bytes) < PEAK_LIMIT_BYTES, f"peak RSS {int(peak_bytes) / 1e9:.2f} GB"
