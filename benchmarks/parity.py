"""Record what the engine writes for every public clip, then compare two records: a refactor's proof that
nothing changed.

    python -m benchmarks.parity record OUT.json [--manifest M] [--model base]
    python -m benchmarks.parity compare BEFORE.json AFTER.json

`record` transcribes every clip of the manifest (default: ../shared/speech/public/manifest.jsonl, every
language) in several modes (greedy and beam 5, plain and speculative, k adaptive and fixed, with and without
timestamps) and keeps per run: tokens per segment, text, language, which tokens the draft wrote, the target
pass count, and the keys of the JSON stats. `compare` lists every run whose tokens, text, language, drafted
flags or pass count differ, and every stats key that went missing (the JSON schema may only grow); it exits
1 if anything differs. Record on the old commit (a worktree), then on the new one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MANIFEST = ROOT.parent / "shared" / "speech" / "public" / "manifest.jsonl"
MODES: dict[str, dict[str, Any]] = {
    "greedy-none": {"draft": "none"},
    "greedy-self": {"draft": "self"},
    "greedy-self-k3-nots": {"draft": "self", "draft_k": 3, "timestamps": False},
    "beam5-none": {"draft": "none", "beam_size": 5},
    "beam5-self-k4": {"draft": "self", "beam_size": 5, "draft_k": 4},
}


def _keys(value: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for key, item in value.items():
        keys.add(prefix + key)
        if isinstance(item, dict) and key != "accepted_length_histogram":
            keys |= _keys(item, f"{prefix}{key}.")
    return keys


def record(out: Path, manifest: Path, model_name: str) -> None:
    import torch

    from asr.audio_io import load_audio
    from asr.models import load_model
    from asr.transcribe import TranscribeOptions, transcribe

    torch.set_num_threads(2)
    entries = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    model = load_model(model_name)
    runs: dict[str, dict[str, Any]] = {}
    keys: dict[str, list[str]] = {}
    for entry in entries:
        samples = load_audio(manifest.parent / entry["audio"])
        for mode, overrides in MODES.items():
            result = transcribe(model, samples, **overrides)
            stats = result.stats.to_dict()
            runs[f"{entry['audio']}|{mode}"] = {
                "tokens": [s.tokens for s in result.segments],
                "text": result.text,
                "language": result.language,
                "drafted": [s.drafted for s in result.segments],
                "target_passes": stats["target_passes"],
            }
            keys[mode] = sorted(_keys(stats))
        print(entry["audio"], flush=True)
    first = manifest.parent / entries[0]["audio"]
    compared = transcribe(model, load_audio(first), transcribe_options=TranscribeOptions(compare=True))
    keys["compare"] = sorted(_keys(compared.stats.to_dict()))
    out.write_text(json.dumps({"runs": runs, "stats_keys": keys}, indent=1))


def compare(before_path: Path, after_path: Path) -> int:
    before, after = json.loads(before_path.read_text()), json.loads(after_path.read_text())
    problems = [f"run missing: {run}" for run in before["runs"].keys() - after["runs"].keys()]
    for run, old in before["runs"].items():
        new = after["runs"].get(run)
        if new is not None:
            problems += [f"{run}: {field} differs" for field in old if old[field] != new.get(field)]
    for mode, old_keys in before["stats_keys"].items():
        missing = set(old_keys) - set(after["stats_keys"].get(mode, []))
        added = set(after["stats_keys"].get(mode, [])) - set(old_keys)
        problems += [f"{mode}: stats key gone: {key}" for key in sorted(missing)]
        if added:
            print(f"{mode}: stats keys added: {', '.join(sorted(added))}")
    n_runs = len(before["runs"])
    print(
        "\n".join(problems)
        if problems
        else f"{n_runs} runs: tokens, text, language, drafted, passes identical"
    )
    return 1 if problems else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    rec = commands.add_parser("record")
    rec.add_argument("out", type=Path)
    rec.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    rec.add_argument("--model", default="base")
    cmp = commands.add_parser("compare")
    cmp.add_argument("before", type=Path)
    cmp.add_argument("after", type=Path)
    args = parser.parse_args()
    if args.command == "record":
        record(args.out, args.manifest, args.model)
    else:
        sys.exit(compare(args.before, args.after))


if __name__ == "__main__":
    main()
