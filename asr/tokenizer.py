"""Whisper's tokenizer: a `tokenizers` BPE file plus the special tokens Whisper's decoding needs.

English-only and multilingual models differ in their BPE and in where the special tokens sit (tiny.en:
EOT 50256; base: EOT 50257), so every id is looked up by name, never hard-coded. Timestamp tokens
<|0.00|> ... <|30.00|> follow <|notimestamps|> and are not in the tokenizer file.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path

from tokenizers import Tokenizer as _BPE

from .errors import InvalidOptionError

TASKS = ("transcribe", "translate")
_LANGUAGE_TOKEN = re.compile(r"^<\|([a-z]{2,3}|haw|yue)\|>$")


class Tokenizer:
    def __init__(self, path: str | Path, multilingual: bool) -> None:
        self.bpe = _BPE.from_file(str(path))
        self.multilingual = multilingual

        def special(name: str) -> int:
            token_id = self.bpe.token_to_id(name)
            if token_id is None:
                raise ValueError(f"tokenizer {path} lacks {name}")
            return token_id

        self.eot = special("<|endoftext|>")
        self.sot = special("<|startoftranscript|>")
        self.translate = special("<|translate|>")
        self.transcribe = special("<|transcribe|>")
        self.sot_lm = special("<|startoflm|>")
        self.sot_prev = special("<|startofprev|>")
        nospeech = self.bpe.token_to_id("<|nospeech|>")
        self.no_speech = nospeech if nospeech is not None else special("<|nocaptions|>")
        self.no_timestamps = special("<|notimestamps|>")
        self.timestamp_begin = self.no_timestamps + 1
        # Language tokens sit between SOT and <|translate|>.
        self.language_tokens: dict[str, int] = {}
        for token_id in range(self.sot + 1, self.translate):
            match = _LANGUAGE_TOKEN.match(self.bpe.id_to_token(token_id) or "")
            if match:
                self.language_tokens[match.group(1)] = token_id

    @cached_property
    def languages(self) -> tuple[str, ...]:
        return tuple(self.language_tokens) if self.multilingual else ("en",)

    def sot_sequence(self, language: str | None, task: str) -> list[int]:
        """<|startoftranscript|> [<|lang|> <|task|>] — English-only models take SOT alone."""
        if not self.multilingual:
            return [self.sot]
        if language not in self.language_tokens:
            raise InvalidOptionError(f"unknown language {language!r}; allowed: {', '.join(self.languages)}")
        return [self.sot, self.language_tokens[language], getattr(self, task)]

    def encode(self, text: str) -> list[int]:
        return self.bpe.encode(text, add_special_tokens=False).ids

    def decode(self, tokens: list[int]) -> str:
        """Text of the text tokens only (specials and timestamps dropped)."""
        return self.bpe.decode([t for t in tokens if t < self.eot])

    @cached_property
    def non_speech_tokens(self) -> tuple[int, ...]:
        """Tokens for symbols that are not speech (openai/whisper's list), for a model without a config."""
        symbols = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』')
        symbols += [
            "<<",
            ">>",
            "<<<",
            ">>>",
            "--",
            "---",
            "-(",
            "-[",
            "('",
            '("',
            "((",
            "))",
            "(((",
            ")))",
            "[[",
            "]]",
            "{{",
            "}}",
            "♪♪",
            "♪♪♪",
        ]
        miscellaneous = set("♩♪♫♬♭♮♯")
        result = {self.encode(" -")[0], self.encode(" '")[0]}
        for symbol in symbols + sorted(miscellaneous):
            for tokens in (self.encode(symbol), self.encode(" " + symbol)):
                if len(tokens) == 1 or symbol in miscellaneous:
                    result.add(tokens[0])
        return tuple(sorted(result))
