#!/usr/bin/env bash
# Regenerate the project's own short speech clips with eSpeak NG and SoX (both Debian packages):
#
#     apt-get install -y espeak-ng sox libsox-fmt-all     # libsox-fmt-all is only needed for other formats
#     bash samples/make_samples.sh
#
# Each clip is synthesized at eSpeak's native 22.05 kHz, then converted by SoX to what Whisper expects:
# 16 kHz, mono, 16-bit. The spoken text lives in transcripts.json (the single source of truth: this script
# reads it), so the tests can compare a transcription with exactly what was said.
#
# Deterministic: eSpeak NG has no randomness, SoX runs with -R (repeatable: fixed seeds, no timestamps) and -D
# (no dither when reducing to 16 bits). Same tool versions give byte-identical files; the versions used are
# printed at the end and recorded in README.md.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
transcripts="$here/transcripts.json"

for tool in espeak-ng sox python3; do
    command -v "$tool" >/dev/null || { echo "make_samples.sh: $tool is not installed (see the header)" >&2; exit 1; }
done

workdir="$(mktemp -d)"
trap 'rm -rf "$workdir"' EXIT

# text_of FILE: the sentence transcripts.json gives for FILE.
text_of() {
    python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$transcripts" "$1"
}

# synthesize OUTPUT VOICE WORDS_PER_MINUTE: speak OUTPUT's sentence, then convert to 16 kHz mono 16-bit.
synthesize() {
    local output="$1" voice="$2" rate="$3"
    local raw="$workdir/${output%.*}.22k.wav"
    espeak-ng -v "$voice" -s "$rate" -w "$raw" "$(text_of "$output")"
    sox -R -D "$raw" -r 16000 -c 1 -b 16 "$here/$output"
    echo "$output: voice $voice, $rate wpm, $(soxi -D "$here/$output") s, $(stat -c %s "$here/$output") bytes"
}

synthesize hello.wav en-us 160      # American English, male (espeak-ng's default voice variant)
synthesize weather.wav en+f3 165    # British English, female variant f3
synthesize numbers.flac en-gb 130   # British English, male, slower

echo "made with: $(espeak-ng --version | head -n 1 | cut -d' ' -f1-4); $(sox --version | sed 's/^sox: *//')"
