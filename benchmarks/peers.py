"""Ours vs transformers vs faster-whisper on real English speech, same `base` weights, same thread count.

    python -m benchmarks.peers [--manifest M] [--out DIR] [--systems a,b] [--limit N] [--repeats 3]
        [--threads 2] [--no-timestamps]

Needs benchmarks/requirements-peers.txt. Every system (benchmarks/peer_systems.py) runs in its own worker
process, one after the other, so its start-up (interpreter, imports, weight conversion, model load) and peak
RSS are its own. In a worker, after a warm-up on the first clips, each clip is transcribed `repeats` times
from float32 samples in memory (the driver decodes every file once with our loader, so every system reads
the same samples): the median is the clip's wall time. Per system and clip: wall time, real-time factor,
decode-phase time where the engine separates it, WER (jiwer, after a Whisper-style English normalizer on
both sides), and whether the text tokens equal our plain target's. The headline is each system's total
wall time over the clips divided by ours-speculative's, measured in one run; absolute times are notes.
Writes results.json, results.md and peers.png to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.machine import cpu_name
from benchmarks.peer_systems import SYSTEMS, WorkerConfig

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MANIFEST = ROOT.parent / "shared" / "speech" / "public" / "manifest.jsonl"
SAMPLE_RATE = 16000
HEADLINE = "ours-spec"  # ratios are over this system's total
N_WARMUP_CLIPS = 2
RESULT_PREFIX = "PEERS-RESULT "
VERSIONED = ("torch", "transformers", "ctranslate2", "faster-whisper", "jiwer", "numpy", "matplotlib")


# --- worker ---------------------------------------------------------------------------------------------


def worker(args: argparse.Namespace) -> None:
    """Load one system, transcribe every clip, print one JSON line on stdout."""
    t_setup = time.perf_counter()
    config = WorkerConfig(args.threads, not args.no_timestamps, args.ct2_dir)
    run = SYSTEMS[args.worker].setup(config)
    setup_s = time.perf_counter() - t_setup
    startup_s = time.time() - args.spawn_time  # from the driver's spawn: interpreter start counts too
    clips = json.loads(args.clips_file.read_text())
    samples = [np.load(c["samples"]) for c in clips]
    for s in samples[:N_WARMUP_CLIPS]:  # first-call allocations and kernel selection
        run(s)
    rows = []
    for clip, s in zip(clips, samples, strict=True):
        walls, outputs = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = run(s)
            walls.append(out.extra.get("computed_wall_s", time.perf_counter() - start))
            outputs.append(out)
        decodes = [o.decode_s for o in outputs if o.decode_s is not None]
        rows.append(
            {
                "clip": clip["name"],
                "wall_s": statistics.median(walls),
                "wall_s_all": walls,
                "decode_s": statistics.median(decodes) if decodes else None,
                "text": outputs[0].text,
                "tokens": outputs[0].tokens,
                "deterministic": all(o.tokens == outputs[0].tokens for o in outputs),
                "extra": outputs[0].extra,
            }
        )
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    result = {"startup_s": startup_s, "setup_s": setup_s, "peak_rss_mb": peak_kb / 1024, "clips": rows}
    print(RESULT_PREFIX + json.dumps(result), flush=True)


# --- driver ---------------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        found["asr (git)"] = commit
    except (OSError, subprocess.CalledProcessError):
        pass
    return found


def ct2_directory() -> Path:
    """The bundled base model as a CTranslate2 model directory: the two parts joined into model.bin once."""
    from asr.models import BUNDLED, _package_file
    from asr.weights import cache_dir

    spec = BUNDLED["base"]
    directory = cache_dir() / f"ct2-base-{spec.sha256[:16]}"
    model_bin = directory / "model.bin"
    if not model_bin.is_file():
        from asr.weights import sha256_of

        parts = [_package_file(p) for p in spec.parts]
        if sha256_of(parts) != spec.sha256:
            raise SystemExit("bundled base weights fail their sha256 check: reinstall the project")
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / "model.bin.tmp"
        with open(tmp, "wb") as f:
            for part in parts:
                f.write(part.read_bytes())
        os.replace(tmp, model_bin)
    source = _package_file(spec.config).parent
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        link = directory / name
        if not link.exists():
            link.symlink_to(source / name)
    return directory


def make_normalizer() -> tuple[Any, str]:
    """Whisper's English normalizer (transformers' EnglishTextNormalizer with the spelling map that
    whisper-normalizer ships), else the tests' simple one."""
    try:
        from importlib.resources import files

        from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

        mapping = json.loads((files("whisper_normalizer") / "normalizers" / "english.json").read_text())
        return EnglishTextNormalizer(
            mapping
        ), "transformers EnglishTextNormalizer (+ whisper-normalizer spelling map)"
    except (ImportError, FileNotFoundError, ModuleNotFoundError):
        from tests.util import normalize

        return (
            lambda text: " ".join(normalize(text))
        ), "tests/util.py normalize (lower case, no punctuation)"


def run_system(name: str, args: argparse.Namespace, clips_file: Path, ct2_dir: Path | None) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.update({v: str(args.threads) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")})
    command = [
        sys.executable,
        "-m",
        "benchmarks.peers",
        "--worker",
        name,
        "--clips-file",
        str(clips_file),
        "--repeats",
        str(args.repeats),
        "--threads",
        str(args.threads),
        "--spawn-time",
        repr(time.time()),
    ]
    if ct2_dir is not None:
        command += ["--ct2-dir", str(ct2_dir)]
    if args.no_timestamps:
        command.append("--no-timestamps")
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        tail = [line for line in done.stderr.strip().splitlines() if line.strip()][-3:]
        return {"error": f"exit {done.returncode}: " + " | ".join(tail)}
    return json.loads(lines[-1].removeprefix(RESULT_PREFIX))


def score(results: dict[str, dict], entries: list[dict], normalize: Any) -> None:
    """Add WER, RTF and token identity with the system's reference (our plain target, greedy or beam 5) to
    every system's rows and totals (in place)."""
    import jiwer

    by_name = {e["name"]: e for e in entries}
    for name, result in results.items():
        if "error" in result:
            continue
        reference = SYSTEMS[name].reference
        reference_rows = {r["clip"]: r for r in results.get(reference, {}).get("clips", [])}
        refs, hyps, seen = [], [], set()
        for row in result["clips"]:
            entry = by_name[row["clip"]]
            ref, hyp = normalize(entry["text"]), normalize(row["text"])
            row["wer"] = jiwer.wer(ref, hyp) if ref.strip() else None
            row["rtf"] = row["wall_s"] / entry["duration_s"]
            same = reference_rows.get(row["clip"])
            row["identical"] = None if same is None else row["tokens"] == same["tokens"]
            if ref not in seen:  # the same speech twice (jfk.flac, jfk.wav) counts once in the WER
                seen.add(ref)
                refs.append(ref)
                hyps.append(hyp)
        rows = result["clips"]
        decodes = [r["decode_s"] for r in rows]
        result["total_wall_s"] = sum(r["wall_s"] for r in rows)
        result["total_decode_s"] = sum(decodes) if all(d is not None for d in decodes) else None
        result["audio_s"] = sum(by_name[r["clip"]]["duration_s"] for r in rows)
        result["rtf"] = result["total_wall_s"] / result["audio_s"]
        result["wer"] = jiwer.wer(refs, hyps)
        flags = [r["identical"] for r in rows]
        result["n_identical"] = None if None in flags else sum(flags)
        result["all_deterministic"] = all(r["deterministic"] for r in rows)
    headline = results.get(HEADLINE, {}).get("total_wall_s")
    for result in results.values():
        if "error" not in result and headline:
            result["ratio_vs_headline"] = result["total_wall_s"] / headline


def fmt(value: Any, spec: str = ".2f", missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def markdown(report: dict) -> str:
    meta = report["meta"]
    lines = [
        "# Peers on real English speech",
        "",
        f"Machine: {meta['machine']}; {meta['threads']} threads for every system; "
        f"{meta['n_clips']} clips, {meta['audio_s']:.1f} s of audio; "
        f"median of {meta['repeats']} after warm-up; "
        f"timestamps {'on' if meta['timestamps'] else 'off'}; weights: bundled `base` for all; "
        f"WER normalizer: {meta['normalizer']}.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".",
        "",
        f"**x {HEADLINE}** = the system's total wall time over the clips / {HEADLINE}'s, "
        "measured in this run (above 1: slower than ours). Absolute times are notes. Wall time is from "
        "samples in memory to text (feature extraction included); start-up is from process spawn to "
        "model ready (imports, weight conversion, load). "
        "Identical = the clip's text tokens (no special or timestamp tokens) equal our plain target's: "
        "ours-beam5's for beam-5 rows, ours-greedy's for the rest.",
        "",
        "| system | clips s | x " + HEADLINE + " | RTF | decode s | WER | identical | start-up s | "
        "start-up + clips s | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report["systems"].items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error'][:200]} | | | | | | | | |")
            continue
        n = len(r["clips"])
        identical = "-" if r["n_identical"] is None else f"{r['n_identical']}/{n}"
        lines.append(
            f"| {name} | {r['total_wall_s']:.2f} | {fmt(r.get('ratio_vs_headline'))} | {r['rtf']:.3f} | "
            f"{fmt(r['total_decode_s'])} | {r['wer']:.1%} | {identical} | {r['startup_s']:.1f} | "
            f"{r['startup_s'] + r['total_wall_s']:.1f} | {r['peak_rss_mb']:.0f} |"
        )
    lines += ["", "Settings:", ""]
    lines += [f"- {name}: {SYSTEMS[name].settings}" for name in report["systems"]]
    ok = {name: r for name, r in report["systems"].items() if "error" not in r}
    if ok:
        names = list(ok)
        lines += ["", "Per clip, wall time s (median):", ""]
        lines.append("| clip | audio s | " + " | ".join(names) + " |")
        lines.append("|---|---|" + "---|" * len(names))
        for i, clip in enumerate(report["clips"]):
            cells = [
                f"{ok[n]['clips'][i]['wall_s']:.2f}"
                + ("" if ok[n]["clips"][i]["identical"] is not False else "*")
                for n in names
            ]
            lines.append(f"| {clip['name']} | {clip['duration_s']:.1f} | " + " | ".join(cells) + " |")
        lines += ["", "\\* tokens differ from our plain target's (greedy or beam 5, as the system)."]
    spec = ok.get(HEADLINE)
    if spec:
        rates = [r["extra"].get("acceptance_rate") for r in spec["clips"]]
        per_pass = [r["extra"].get("tokens_per_target_pass") for r in spec["clips"]]
        lines += [
            "",
            f"{HEADLINE}: acceptance {statistics.mean(x for x in rates if x is not None):.0%} "
            "(mean over clips), "
            f"tokens per target pass {statistics.mean(x for x in per_pass if x is not None):.1f}, "
            "k adaptive, target fp32, draft `self` (int8 weights on a CPU, fp16 on a GPU).",
        ]
    beam = ok.get("ours-spec-beam5")
    if beam:
        drafts = {r["extra"].get("draft") for r in beam["clips"]}
        lines.append(f"ours-spec-beam5: stats draft = {', '.join(sorted(map(str, drafts)))}.")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = {n: r for n, r in report["systems"].items() if "error" not in r}
    if not ok:
        return
    names = list(ok)[::-1]
    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(12, 0.45 * len(names) + 1.8), sharey=True)
    colors = {
        "ours": "tab:blue",
        "limit": "tab:cyan",
        "transformers": "tab:orange",
        "faster-whisper": "tab:green",
    }
    bar_colors = [colors[SYSTEMS[n].engine] for n in names]
    walls = [ok[n]["total_wall_s"] for n in names]
    ax_time.barh(names, walls, color=bar_colors)
    for y, n in enumerate(names):
        ratio = ok[n].get("ratio_vs_headline")
        if ratio is not None:
            ax_time.text(walls[y], y, f" {ratio:.2f}x", va="center", fontsize=8)
    ax_time.set_xlabel(f"wall time over {report['meta']['n_clips']} clips, s (label: x {HEADLINE})")
    ax_mem.barh(names, [ok[n]["peak_rss_mb"] for n in names], color=bar_colors)
    ax_mem.set_xlabel("peak RSS, MB (own process)")
    fig.suptitle(
        f"bundled base, {report['meta']['threads']} threads, {report['meta']['machine']}", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def drive(args: argparse.Namespace) -> None:
    from asr.audio_io import load_audio

    names = [n.strip() for n in args.systems.split(",")] if args.systems else list(SYSTEMS)
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown:
        raise SystemExit(f"unknown system(s) {', '.join(unknown)}; allowed: {', '.join(SYSTEMS)}")
    entries = [json.loads(line) for line in args.manifest.read_text().splitlines() if line.strip()]
    entries = [e for e in entries if e["language"] == "en"][: args.limit]
    for e in entries:
        e["name"] = Path(e["audio"]).name
    ct2_dir = ct2_directory() if any(SYSTEMS[n].engine == "faster-whisper" for n in names) else None
    normalize, normalizer_name = make_normalizer()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
        clips = []
        for i, e in enumerate(entries):
            path = Path(tmp) / f"{i:03d}.npy"
            np.save(path, load_audio(args.manifest.parent / e["audio"]))
            clips.append({"name": e["name"], "samples": str(path)})
        clips_file = Path(tmp) / "clips.json"
        clips_file.write_text(json.dumps(clips))
        for name in names:
            start = time.perf_counter()
            results[name] = run_system(name, args, clips_file, ct2_dir)
            status = results[name].get("error") or f"{sum(r['wall_s'] for r in results[name]['clips']):.2f} s"
            print(f"{name}: {status} (worker {time.perf_counter() - start:.0f} s)", flush=True)
    score(results, entries, normalize)
    report = {
        "meta": {
            "machine": f"{cpu_name()}, {os.cpu_count()} CPUs",
            "threads": args.threads,
            "dtype": "fp32 target weights for ours/transformers; faster-whisper per compute_type",
            "repeats": args.repeats,
            "timestamps": not args.no_timestamps,
            "n_clips": len(entries),
            "audio_s": sum(e["duration_s"] for e in entries),
            "manifest": str(args.manifest),
            "normalizer": normalizer_name,
            "reference": {n: SYSTEMS[n].reference for n in names},
            "headline": HEADLINE,
            "versions": versions(),
        },
        "clips": [{k: e[k] for k in ("name", "duration_s", "kind", "text")} for e in entries],
        "systems": {n: {"settings": SYSTEMS[n].settings, **results[n]} for n in names},
    }
    (args.out / "results.json").write_text(json.dumps(report, indent=2))
    table = markdown(report)
    (args.out / "results.md").write_text(table)
    plot(report, args.out / "peers.png")
    print("\n" + table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    parser.add_argument("--out", type=Path, default=Path("peers-results"))
    parser.add_argument("--systems", default=None, help=f"comma list; default all: {','.join(SYSTEMS)}")
    parser.add_argument("--limit", type=int, default=None, help="only the first N English clips")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-timestamps", action="store_true")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--clips-file", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--spawn-time", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ct2-dir", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
    else:
        drive(args)


if __name__ == "__main__":
    main()
