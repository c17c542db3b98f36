"""Start-up: one short file through the command line, as whole processes (issue #22).

    python -m benchmarks.startup [CLIP] [--repeats 5] [--fw-python PATH]

Times, alternating system by system, repeat after repeat (so that load on a shared machine spreads evenly):
- ours-cold: `asr transcribe CLIP --server off` (a new process: import torch, map the weights, pack, ...);
- ours-warm: `asr transcribe CLIP` with `asr serve` running (started before, not timed; the client
  imports no torch);
- fw-int8: a Python process that imports faster-whisper, loads the same bundled `base` weights with
  compute_type int8 and transcribes CLIP greedily (beam 1, like ours), language detected like ours.
Each is the wall time of the whole process and its peak RSS; then, in-process, the parts of our start-up
after `import torch` (each in a fresh process). faster-whisper runs from `--fw-python` (a Python with
`pip install -r benchmarks/requirements-peers.txt`; default: this one).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.machine import cpu_name

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CLIP = "audio/librispeech/61-70968-0000.flac"  # 4.9 s, English

FW_SCRIPT = """
import os, sys
from faster_whisper import WhisperModel
model = WhisperModel(sys.argv[1], device="cpu", compute_type="int8", cpu_threads=os.cpu_count())
segments, info = model.transcribe(sys.argv[2], beam_size=1)
print("".join(s.text for s in segments).strip())
"""

PARTS_SCRIPT = """
import json, sys, time
T = time.perf_counter
parts = {}
t = T(); import torch; parts["import torch"] = T() - t
t = T()
from asr import models, native_draft, weights
from asr.decoding import DecodingOptions
from asr.model import Whisper
from asr.tokenizer import Tokenizer
from asr.transcribe import Transcriber
parts["import asr"] = T() - t
spec = models.BUNDLED["base"]
files = [models._package_file(ref) for ref in spec.parts]
t = T(); sd = weights.load_converted("base", files, spec.sha256, torch.float32)
parts["map weights"] = T() - t
t = T(); whisper = Whisper.from_state_dict(sd, torch.device("cpu"), torch.float32); parts["pack"] = T() - t
t = T(); Tokenizer(models._package_file(spec.tokenizer), multilingual=True); parts["tokenizer"] = T() - t
t = T(); lib = native_draft.library(); parts["kernel lookup"] = T() - t
cache = native_draft.quantised_cache_path(spec.sha256)
t = T(); native_draft.NativeDraft(whisper.decoder, lib, cache); parts["draft (cached)"] = T() - t
t = T(); native_draft.NativeDraft(whisper.decoder, lib); parts["draft (uncached)"] = T() - t
t = T(); Transcriber(models.load_model("base"), DecodingOptions())
parts["load_model + Transcriber"] = T() - t
print(json.dumps(parts))
"""


def cpu_flags() -> str:
    try:
        flags = next(
            line.split(":", 1)[1].split()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("flags")
        )
    except (OSError, StopIteration):
        return "?"
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")
    return " ".join(f"{flag}={'yes' if flag in flags else 'no'}" for flag in wanted)


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall time (s), peak RSS (MB) and stdout of one whole process."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)  # its own peak RSS, not the children's maximum
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        if process.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed: {err.read().decode().strip().splitlines()[-1:]}")
        return wall, usage.ru_maxrss / 1024, out.read().decode().strip()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("clip", nargs="?", default=None, help="a short audio file (default: a 4.9-s clip)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fw-python", default=sys.executable, help="a Python with faster-whisper")
    args = parser.parse_args()
    speech = Path(os.environ.get("ASR_SPEECH_DIR", REPO_ROOT.parent / "shared" / "speech")) / "public"
    clip = Path(args.clip) if args.clip else speech / DEFAULT_CLIP

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    # in a process of its own: this one must not hold torch, or every child's peak RSS would count it
    # (a forked child's peak starts at its parent's size)
    ct2_directory = subprocess.run(
        [sys.executable, "-c", "from benchmarks.peers import ct2_directory; print(ct2_directory())"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
    ).stdout.strip()
    runtime = tempfile.mkdtemp(prefix="asr-startup-bench-")
    env["ASR_RUNTIME_DIR"] = runtime  # our own server, whatever else runs on this machine
    asr = [sys.executable, "-m", "asr.cli"]
    systems = {
        "ours-cold": [*asr, "transcribe", str(clip), "--server", "off"],
        "ours-warm": [*asr, "transcribe", str(clip)],
        "fw-int8": [args.fw_python, "-c", FW_SCRIPT, ct2_directory, str(clip)],
    }
    load_before = os.getloadavg()
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores; {cpu_flags()}")
    print(f"clip: {clip.name}; {args.repeats} repeats, systems alternating; load before {load_before}")
    for name, argv in systems.items():  # warm-up: caches built, files in the page cache
        if name != "ours-warm":
            timed(argv, env)
    subprocess.run([*asr, "serve", "--background"], env=env, check=True, capture_output=True)
    try:
        times: dict[str, list[float]] = {name: [] for name in systems}
        peaks: dict[str, float] = dict.fromkeys(systems, 0.0)
        texts: dict[str, set[str]] = {name: set() for name in systems}
        timed(systems["ours-warm"], env)
        for _ in range(args.repeats):
            for name, argv in systems.items():
                wall, peak, text = timed(argv, env)
                times[name].append(wall)
                peaks[name] = max(peaks[name], peak)
                texts[name].add(text)
    finally:
        subprocess.run([*asr, "serve", "--stop"], env=env, capture_output=True)
    medians = {name: statistics.median(values) for name, values in times.items()}
    print("\n| system | median s | min s | max s | peak RSS MB (ours-warm: the client) | transcript |")
    print("|---|---|---|---|---|---|")
    for name in systems:
        values = times[name]
        text = " / ".join(sorted(texts[name]))
        print(
            f"| {name} | {medians[name]:.2f} | {min(values):.2f} | {max(values):.2f} | {peaks[name]:.0f} "
            f"| {text[:60]} |"
        )
    cold, warm, fw = medians["ours-cold"], medians["ours-warm"], medians["fw-int8"]
    print(f"\nours-cold / fw-int8: {cold / fw:.2f}x (target: 1.3x or less)")
    print(f"fw-int8 / ours-warm: {fw / warm:.2f}x faster warm (target: 2x or more)")
    print(f"ours cold and warm transcripts identical: {texts['ours-cold'] == texts['ours-warm']}")

    parts: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        done = subprocess.run(
            [sys.executable, "-c", PARTS_SCRIPT], env=env, capture_output=True, text=True, check=True
        )
        for part, seconds in json.loads(done.stdout).items():
            parts.setdefault(part, []).append(seconds)
    print("\nour start-up, in-process, each part in a fresh process (median s):")
    for part, values in parts.items():
        print(f"  {part:28s} {statistics.median(values):.3f}")
    after = [statistics.median(parts[p]) for p in ("map weights", "pack", "tokenizer", "kernel lookup")]
    after.append(statistics.median(parts["draft (cached)"]))
    print(f"  after import torch, base     {sum(after):.3f} (target: under 0.2)")
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
