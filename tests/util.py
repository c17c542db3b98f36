"""Test helpers: tiny random-weight Whisper models, and our weights as a transformers model."""

from __future__ import annotations

import torch

from asr.model import ModelDims, TextDecoder, Whisper
from asr.models import BUNDLED, LoadedModel, _package_file
from asr.tokenizer import Tokenizer

# The English-only tokenizer (vocab 51864) serves every tiny random model.
TINY_EN_TOKENIZER = _package_file(BUNDLED["tiny.en"].tokenizer)


def random_dims(
    n_state: int = 32, n_head: int = 2, n_layer: int = 2, n_text_ctx: int = 64, n_vocab: int = 51864
) -> ModelDims:
    return ModelDims(
        n_mels=80,
        n_audio_ctx=1500,
        n_audio_state=n_state,
        n_audio_head=n_head,
        n_audio_layer=n_layer,
        n_vocab=n_vocab,
        n_text_ctx=n_text_ctx,
        n_text_state=n_state,
        n_text_head=n_head,
        n_text_layer=n_layer,
    )


def random_model(seed: int = 0, dims: ModelDims | None = None, scale: float = 1.0) -> LoadedModel:
    """A tiny Whisper with random weights and the real tiny.en tokenizer (for unit and property tests).

    `scale` multiplies the token embedding (= output head): a larger one gives peakier distributions.
    """
    dims = dims or random_dims()
    generator = torch.Generator().manual_seed(seed)
    model = Whisper(dims)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("ln.weight") or "_ln." in name or name.endswith("ln_post.weight"):
                p.fill_(1.0)
            elif p.ndim == 1:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
            else:
                p.copy_(torch.randn(p.shape, generator=generator) * (1.0 / p.shape[-1] ** 0.5))
        model.decoder.token_embedding.weight.mul_(scale)
    model.eval().requires_grad_(False)
    model.prepare_for_inference()  # the same kernels real models use
    tokenizer = Tokenizer(TINY_EN_TOKENIZER, multilingual=False)
    return LoadedModel(
        name=f"random-{seed}",
        model=model,
        tokenizer=tokenizer,
        suppress_tokens=(),
        suppress_tokens_begin=(220, tokenizer.eot),
    )


def to_transformers(m: LoadedModel):
    """The same weights as a transformers WhisperForConditionalGeneration, with a matching generation config.

    Used to compare our engine with transformers' own `generate`."""
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    sd = m.model.state_dict()
    d = m.dims
    tok = m.tokenizer
    out: dict[str, torch.Tensor] = {}

    def linear(dst: str, src: str) -> None:
        out[f"{dst}.weight"] = sd[f"{src}.weight"]
        out[f"{dst}.bias"] = sd[f"{src}.bias"]

    def split(dst: str, src: str, names: str) -> None:
        weights = sd[f"{src}.weight"].chunk(len(names))
        biases = sd[f"{src}.bias"].chunk(len(names))
        for n, w, b in zip(names, weights, biases, strict=True):
            out[f"{dst}.{n}_proj.weight"] = w
            if n != "k":  # Whisper's k projections have no bias
                out[f"{dst}.{n}_proj.bias"] = b

    for stack, n_layer in (("encoder", d.n_audio_layer), ("decoder", d.n_text_layer)):
        for i in range(n_layer):
            s, t = f"{stack}.blocks.{i}", f"model.{stack}.layers.{i}"
            linear(f"{t}.self_attn_layer_norm", f"{s}.attn_ln")
            split(f"{t}.self_attn", f"{s}.attn.qkv", "qkv")
            linear(f"{t}.self_attn.out_proj", f"{s}.attn.out")
            linear(f"{t}.final_layer_norm", f"{s}.mlp_ln")
            linear(f"{t}.fc1", f"{s}.fc1")
            linear(f"{t}.fc2", f"{s}.fc2")
            if stack == "decoder":
                linear(f"{t}.encoder_attn_layer_norm", f"{s}.cross_attn_ln")
                linear(f"{t}.encoder_attn.q_proj", f"{s}.cross_attn.q")
                split(f"{t}.encoder_attn", f"{s}.cross_attn.kv", "kv")
                linear(f"{t}.encoder_attn.out_proj", f"{s}.cross_attn.out")
    for conv in ("conv1", "conv2"):
        linear(f"model.encoder.{conv}", f"encoder.{conv}")
    out["model.encoder.embed_positions.weight"] = sd["encoder.positional_embedding"]
    linear("model.encoder.layer_norm", "encoder.ln_post")
    out["model.decoder.embed_tokens.weight"] = sd["decoder.token_embedding.weight"]
    out["model.decoder.embed_positions.weight"] = sd["decoder.positional_embedding"]
    linear("model.decoder.layer_norm", "decoder.ln")
    out["proj_out.weight"] = sd["decoder.token_embedding.weight"]
    config = WhisperConfig(
        vocab_size=d.n_vocab,
        num_mel_bins=d.n_mels,
        encoder_layers=d.n_audio_layer,
        encoder_attention_heads=d.n_audio_head,
        decoder_layers=d.n_text_layer,
        decoder_attention_heads=d.n_text_head,
        d_model=d.n_text_state,
        encoder_ffn_dim=4 * d.n_audio_state,
        decoder_ffn_dim=4 * d.n_text_state,
        max_source_positions=d.n_audio_ctx,
        max_target_positions=d.n_text_ctx,
        decoder_start_token_id=tok.sot,
        eos_token_id=tok.eot,
        pad_token_id=tok.eot,
        bos_token_id=tok.eot,
    )
    hf = WhisperForConditionalGeneration(config).eval()
    missing, unexpected = hf.load_state_dict(out, strict=False)
    assert not unexpected and not missing, (missing, unexpected)
    hf.generation_config = GenerationConfig(
        decoder_start_token_id=tok.sot,
        eos_token_id=tok.eot,
        pad_token_id=tok.eot,
        bos_token_id=tok.eot,
        suppress_tokens=list(m.suppress_tokens),
        begin_suppress_tokens=list(m.suppress_tokens_begin),
        no_timestamps_token_id=tok.no_timestamps,
        is_multilingual=tok.multilingual,
        lang_to_id={f"<|{c}|>": i for c, i in tok.language_tokens.items()},
        task_to_id={"transcribe": tok.transcribe, "translate": tok.translate},
        max_initial_timestamp_index=50,
        max_length=d.n_text_ctx,
    )
    return hf


def normalize(text: str) -> list[str]:
    """Lower case, punctuation dropped (apostrophes kept inside words): enough to compare transcripts."""
    import re

    text = text.lower().replace("-", " ")
    return re.sub(r"[^\w' ]+", " ", text).replace(" '", " ").split()


def edit_distance(reference: list[str], hypothesis: list[str]) -> int:
    """Substitutions, insertions and deletions turning `reference` into `hypothesis` (words or characters)."""
    previous = list(range(len(hypothesis) + 1))
    for i, r in enumerate(reference, 1):
        current = [i]
        for j, h in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate: word-level edit distance / reference length."""
    ref = normalize(reference)
    return edit_distance(ref, normalize(hypothesis)) / max(len(ref), 1)


def perturbed_decoder(m: LoadedModel, noise: float, seed: int) -> TextDecoder:
    """A copy of a model's decoder with relative Gaussian noise on every weight: a partly right draft."""
    src = m.model.decoder
    with torch.device("meta"):
        decoder = TextDecoder(src.dims)
    g = torch.Generator().manual_seed(seed)
    state = {k: v + noise * v.std() * torch.randn(v.shape, generator=g) for k, v in src.state_dict().items()}
    decoder.load_state_dict(state, assign=True)
    decoder.eval().requires_grad_(False).prepare_for_inference()
    return decoder
