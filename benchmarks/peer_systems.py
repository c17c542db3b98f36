"""The systems `benchmarks.peers` compares: how each is loaded and how it transcribes one clip.

Each system runs in its own worker process (`python -m benchmarks.peers --worker NAME ...`), so start-up and
peak memory are its own. A system is a `setup` that imports and loads (counted as start-up) and returns a
function from 16-kHz float32 samples in memory to an `Output`. Heavy imports happen inside `setup`, never at
import time: the faster-whisper worker must not pay for torch.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

N_WINDOW_SAMPLES = 30 * 16000  # one 30-s window at 16 kHz: longer clips take each engine's long-form path
BEAM = 5


@dataclass
class Output:
    text: str
    tokens: list[int]  # text tokens only: no special or timestamp tokens
    decode_s: float | None = None  # the token loop, where the engine lets it be separated from the rest
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkerConfig:
    threads: int
    timestamps: bool
    ct2_dir: Path | None


Runner = Callable[[np.ndarray], Output]


@dataclass(frozen=True)
class System:
    name: str
    engine: str  # "ours", "limit", "transformers", "faster-whisper"
    settings: str  # what exactly runs, for the table
    setup: Callable[[WorkerConfig], Runner]
    reference: str = "ours-greedy"  # whose tokens this system's are compared with: our plain target's


def _set_torch_threads(config: WorkerConfig) -> None:
    import torch

    torch.set_num_threads(config.threads)


# --- ours -----------------------------------------------------------------------------------------------


def _ours(draft: str, beam_size: int | None) -> Callable[[WorkerConfig], Runner]:
    def setup(config: WorkerConfig) -> Runner:
        _set_torch_threads(config)
        from asr.draft_factory import make_drafter
        from asr.models import load_model
        from asr.transcribe import transcribe

        model = load_model("base")
        make_drafter(draft, model)  # builds the self draft once per process: part of start-up
        eot = model.tokenizer.eot

        def run(samples: np.ndarray) -> Output:
            result = transcribe(
                model, samples, draft=draft, beam_size=beam_size, language="en", timestamps=config.timestamps
            )
            stats = result.stats
            extra = {
                "n_tokens": stats.n_tokens,
                "draft": stats.draft,
                "draft_k": stats.draft_k,
                "beam_size": stats.beam_size,
                "target_passes": stats.target_passes,
                "proposed": stats.proposed,
                "accepted": stats.accepted,
                "acceptance_rate": stats.acceptance_rate,
                "tokens_per_target_pass": stats.tokens_per_target_pass,
                "time_s": dataclasses.asdict(stats.time_s),
            }
            tokens = [t for s in result.segments for t in s.tokens if t < eot]
            return Output(result.text, tokens, stats.time_s.decode, extra)

        return run

    return setup


def _limit(config: WorkerConfig) -> Runner:
    """Our scheme's floor here: log-mel + encoder + (tokens / (k + 1)) target passes of k + 1 tokens each.

    Every input is measured: the speculative greedy run gives the log-mel and encoder times, the tokens and
    k (proposed tokens per target pass, rounded); one decoder pass over k + 1 tokens is timed on the clip's
    own encoder output (median of 20, after the SOT prompt is cached). What it leaves out: the draft's
    steps, verification logic, and the passes lost to rejections.
    """
    _set_torch_threads(config)
    import torch

    from asr.audio import N_FRAMES, log_mel_spectrogram, pad_or_trim
    from asr.draft_factory import make_drafter
    from asr.models import load_model
    from asr.transcribe import transcribe

    model = load_model("base")
    make_drafter("self", model)
    tok = model.tokenizer
    prompt = [tok.sot, tok.language_tokens["en"], tok.transcribe]
    if not config.timestamps:
        prompt.append(tok.no_timestamps)

    def pass_time(samples: np.ndarray, n_new: int) -> float:
        mel = pad_or_trim(log_mel_spectrogram(samples[:N_WINDOW_SAMPLES], model.dims.n_mels), N_FRAMES)
        with torch.inference_mode():
            features = model.model.encoder(mel[None])
            decoder = model.model.decoder
            cache = decoder.new_cache(features, 1)
            decoder(torch.tensor([prompt]), cache)
            tokens = torch.full((1, n_new), 440)  # the id does not change the cost
            times = []
            for i in range(25):
                cache.crop(len(prompt))
                start = time.perf_counter()
                decoder(tokens, cache)
                if i >= 5:  # the first passes warm the kernels for this shape
                    times.append(time.perf_counter() - start)
        return float(np.median(times))

    def run(samples: np.ndarray) -> Output:
        result = transcribe(model, samples, draft="self", language="en", timestamps=config.timestamps)
        stats = result.stats
        times = stats.time_s
        n_tokens = stats.n_tokens
        k = max(1, round(stats.proposed / max(stats.target_passes, 1)))
        one_pass = pass_time(samples, k + 1)
        passes_s = n_tokens / (k + 1) * one_pass
        total = times.mel + times.encoder + passes_s
        extra = {
            "k": k,
            "n_tokens": n_tokens,
            "pass_s": one_pass,
            "mel_s": times.mel,
            "encoder_s": times.encoder,
            "speculative_wall_s": times.total - times.load_audio,
        }
        tokens = [t for s in result.segments for t in s.tokens if t < tok.eot]
        # The wall time of this "system" is the computed floor, not the time this function took.
        return Output(result.text, tokens, passes_s, {"computed_wall_s": total, **extra})

    return run


# --- transformers ---------------------------------------------------------------------------------------


def _transformers(num_beams: int, assistant: str | None) -> Callable[[WorkerConfig], Runner]:
    """transformers on our bundled weights, converted in the worker (counted in its start-up and peak RSS,
    which thus hold our copy of the weights too: a user loading a Hugging Face checkpoint would not)."""

    def setup(config: WorkerConfig) -> Runner:
        _set_torch_threads(config)
        import torch
        from transformers import WhisperFeatureExtractor

        from asr.models import load_model
        from tests.util import to_transformers

        loaded = load_model("base")
        hf = to_transformers(loaded)
        tok = loaded.tokenizer
        features = WhisperFeatureExtractor(
            feature_size=loaded.dims.n_mels
        )  # Whisper's defaults, built locally
        kwargs: dict[str, Any] = {}
        if assistant is not None:
            kwargs["assistant_model"] = _assistant(hf, assistant)

        def run(samples: np.ndarray) -> Output:
            if len(samples) > N_WINDOW_SAMPLES:  # long-form: unpadded features plus their attention mask
                inputs = features(
                    samples,
                    sampling_rate=16000,
                    return_tensors="pt",
                    truncation=False,
                    padding="longest",
                    return_attention_mask=True,
                )
                extra_inputs = {"attention_mask": inputs.attention_mask}
            else:
                inputs = features(samples, sampling_rate=16000, return_tensors="pt")
                extra_inputs = {}
            with torch.inference_mode():
                out = hf.generate(
                    inputs.input_features,
                    language="en",
                    task="transcribe",
                    return_timestamps=config.timestamps,
                    num_beams=num_beams,
                    do_sample=False,
                    **extra_inputs,
                    **kwargs,
                )
            ids = out["sequences"] if isinstance(out, dict) else out
            tokens = [int(t) for t in ids[0] if int(t) < tok.eot]
            return Output(tok.decode(tokens).strip(), tokens)

        return run

    return setup


def _assistant(hf: Any, kind: str) -> Any:
    """The same kind of draft as our `self`: base's own decoder, with cheap weights, reading the target's
    encoder output (a decoder-only WhisperForCausalLM: transformers then feeds it the target's encoder
    states, as it does for distil-whisper assistants)."""
    import copy

    import torch
    from transformers import WhisperForCausalLM

    draft = WhisperForCausalLM(copy.deepcopy(hf.config)).eval()
    state = {k: v for k, v in hf.state_dict().items() if k.startswith(("model.decoder.", "proj_out."))}
    missing, unexpected = draft.load_state_dict(state, strict=False)
    assert not unexpected and not missing, (missing, unexpected)
    draft.generation_config = copy.deepcopy(hf.generation_config)
    if kind == "int8":  # dynamic quantization: int8 weights, activations quantized per call
        return torch.ao.quantization.quantize_dynamic(draft, {torch.nn.Linear}, dtype=torch.qint8)
    if kind == "fp16":
        # The target's encoder states arrive in fp32: cast them where the draft's decoder takes them.
        def to_half(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            states = kwargs.get("encoder_hidden_states")
            if states is not None and states.dtype != torch.float16:
                kwargs["encoder_hidden_states"] = states.half()
            return args, kwargs

        draft = draft.to(torch.float16)
        draft.model.decoder.register_forward_pre_hook(to_half, with_kwargs=True)
        return draft
    raise ValueError(f"unknown assistant kind {kind!r}; allowed: int8, fp16")


# --- faster-whisper -------------------------------------------------------------------------------------


def _faster_whisper(compute_type: str, beam_size: int) -> Callable[[WorkerConfig], Runner]:
    def setup(config: WorkerConfig) -> Runner:
        from faster_whisper import WhisperModel

        assert config.ct2_dir is not None
        model = WhisperModel(
            str(config.ct2_dir), device="cpu", compute_type=compute_type, cpu_threads=config.threads
        )
        eot = model.hf_tokenizer.token_to_id("<|endoftext|>")

        def run(samples: np.ndarray) -> Output:
            segments, _ = model.transcribe(
                samples,
                language="en",
                task="transcribe",
                beam_size=beam_size,
                vad_filter=False,
                without_timestamps=not config.timestamps,
            )
            collected = list(segments)  # the generator does the work
            tokens = [t for s in collected for t in s.tokens if t < eot]
            return Output("".join(s.text for s in collected).strip(), tokens)

        return run

    return setup


# temperature left at its default: 0, falling back to sampling at 0.2, 0.4... when a window's compression
# ratio > 2.4 or mean log-probability < -1 (with temperature 0 alone, fp32 greedy loops on the long clip).
FW_COMMON = "language en, vad off, temperature and condition_on_previous_text default"
HF_COMMON = "generate(language=en, return_timestamps as ours), WhisperFeatureExtractor, fp32"

SYSTEMS: dict[str, System] = {
    s.name: s
    for s in (
        System(
            "ours-greedy", "ours", "transcribe(draft='none'): plain target, greedy, fp32", _ours("none", None)
        ),
        System(
            "ours-beam5",
            "ours",
            "transcribe(draft='none', beam_size=5), fp32",
            _ours("none", BEAM),
            "ours-beam5",
        ),
        System(
            "ours-spec",
            "ours",
            "transcribe(draft='self'): speculative greedy, self draft (int8 on a CPU), k adaptive",
            _ours("self", None),
        ),
        System(
            "ours-spec-beam5",
            "ours",
            "transcribe(draft='self', beam_size=5): whatever the engine does (stats draft says if used)",
            _ours("self", BEAM),
            "ours-beam5",
        ),
        System(
            "limit",
            "limit",
            "computed: log-mel + encoder + tokens/(k+1) x one target pass of k+1 tokens "
            "(k, tokens: a speculative greedy run)",
            _limit,
        ),
        System("hf-greedy", "transformers", f"{HF_COMMON}, greedy", _transformers(1, None)),
        System(
            "hf-beam5", "transformers", f"{HF_COMMON}, num_beams=5", _transformers(BEAM, None), "ours-beam5"
        ),
        System(
            "hf-assist-int8",
            "transformers",
            f"{HF_COMMON}, greedy, assistant_model = base decoder, int8 dynamic-quantized linears",
            _transformers(1, "int8"),
        ),
        System(
            "hf-assist-fp16",
            "transformers",
            f"{HF_COMMON}, greedy, assistant_model = base decoder in fp16",
            _transformers(1, "fp16"),
        ),
        System(
            "fw-fp32",
            "faster-whisper",
            f"compute_type float32, beam_size 1, {FW_COMMON}",
            _faster_whisper("float32", 1),
        ),
        System(
            "fw-fp32-beam5",
            "faster-whisper",
            f"compute_type float32, beam_size 5, {FW_COMMON}",
            _faster_whisper("float32", BEAM),
            "ours-beam5",
        ),
        System(
            "fw-int8",
            "faster-whisper",
            f"compute_type int8, beam_size 1, {FW_COMMON}",
            _faster_whisper("int8", 1),
        ),
        System(
            "fw-int8-beam5",
            "faster-whisper",
            f"compute_type int8, beam_size 5, {FW_COMMON}",
            _faster_whisper("int8", BEAM),
            "ours-beam5",
        ),
    )
}
