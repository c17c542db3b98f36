"""Weights and model loading: the CT2 converter, its cache, HF checkpoints, the registry's errors."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from asr import weights
from asr.errors import ModelNotFoundError, WeightsIntegrityError
from asr.model import Whisper
from asr.models import BUNDLED, hf_to_state_dict, list_models, load_model
from tests.util import TINY_EN_TOKENIZER, random_dims, random_model, to_transformers


def _string(s: str) -> bytes:
    data = s.encode() + b"\0"
    return struct.pack("<H", len(data)) + data


def write_ct2(variables: dict[str, np.ndarray], aliases: dict[str, str]) -> bytes:
    """A CTranslate2 WhisperSpec file, written by the format's description (issue #2)."""
    out = [
        struct.pack("<I", 6),
        _string("WhisperSpec"),
        struct.pack("<I", 3),
        struct.pack("<I", len(variables)),
    ]
    codes = {np.dtype(np.float16): 4, np.dtype(np.int16): 2, np.dtype(np.float32): 0, np.dtype(np.int8): 1}
    for name, array in variables.items():
        array = np.ascontiguousarray(array)
        out += [_string(name), bytes([array.ndim]), *(struct.pack("<I", d) for d in array.shape)]
        out += [bytes([codes[array.dtype]]), struct.pack("<I", array.nbytes), array.tobytes()]
    out.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases.items():
        out += [_string(alias), _string(target)]
    return b"".join(out)


def to_ct2(model: Whisper) -> dict[str, np.ndarray]:
    """Our random weights in CT2's naming, fp16, as the bundled packages store them."""
    sd = {k: v.numpy().astype(np.float16) for k, v in model.state_dict().items()}
    v: dict[str, np.ndarray] = {}

    def lin(dst: str, src: str) -> None:
        v[f"{dst}/weight"], v[f"{dst}/bias"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    def norm(dst: str, src: str) -> None:
        v[f"{dst}/gamma"], v[f"{dst}/beta"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    d = model.dims
    for conv in ("conv1", "conv2"):
        lin(f"encoder/{conv}", f"encoder.{conv}")
    v["encoder/position_encodings/encodings"] = sd["encoder.positional_embedding"]

    def block(t: str, s: str) -> None:  # what encoder and decoder blocks share
        norm(f"{t}/self_attention/layer_norm", f"{s}.attn_ln")
        lin(f"{t}/self_attention/linear_0", f"{s}.attn.qkv")
        lin(f"{t}/self_attention/linear_1", f"{s}.attn.out")
        norm(f"{t}/ffn/layer_norm", f"{s}.mlp_ln")
        lin(f"{t}/ffn/linear_0", f"{s}.fc1")
        lin(f"{t}/ffn/linear_1", f"{s}.fc2")

    for i in range(d.n_audio_layer):
        block(f"encoder/layer_{i}", f"encoder.blocks.{i}")
    norm("encoder/layer_norm", "encoder.ln_post")
    v["decoder/embeddings/weight"] = sd["decoder.token_embedding.weight"]
    v["decoder/position_encodings/encodings"] = sd["decoder.positional_embedding"]
    for i in range(d.n_text_layer):
        s, t = f"decoder.blocks.{i}", f"decoder/layer_{i}"
        block(t, s)
        norm(f"{t}/attention/layer_norm", f"{s}.cross_attn_ln")
        lin(f"{t}/attention/linear_0", f"{s}.cross_attn.q")
        lin(f"{t}/attention/linear_1", f"{s}.cross_attn.kv")
        lin(f"{t}/attention/linear_2", f"{s}.cross_attn.out")
    norm("decoder/layer_norm", "decoder.ln")
    v["encoder/num_heads"] = np.array(d.n_audio_head, dtype=np.int16)
    v["decoder/num_heads"] = np.array(d.n_text_head, dtype=np.int16)
    return v


@pytest.fixture
def fake_bundle(tmp_path, monkeypatch):
    """A random model written as a split CT2 file, registered like a bundled one, with its own cache dir."""
    original = random_model(seed=11, dims=random_dims(n_state=16, n_head=2, n_layer=1, n_vocab=51864))
    data = write_ct2(to_ct2(original.model), {"decoder/projection/weight": "decoder/embeddings/weight"})
    parts = [tmp_path / "model.bin.part1", tmp_path / "model.bin.part2"]
    parts[0].write_bytes(data[: len(data) // 2])
    parts[1].write_bytes(data[len(data) // 2 :])
    monkeypatch.setenv("ASR_CACHE_DIR", str(tmp_path / "cache"))
    return original, parts, weights.sha256_of(parts)


def test_ct2_round_trip_gives_the_same_model(fake_bundle):
    original, parts, sha = fake_bundle
    sd = weights.load_converted("fake", parts, sha)
    restored = Whisper.from_state_dict(sd, "cpu", torch.float32)
    features = torch.randn(1, 1500, 16)
    tokens = torch.tensor([[50257, 1, 2, 3]])
    with torch.inference_mode():
        # the CT2 file holds fp16: compare against the original rounded the same way
        reference = Whisper.from_state_dict(
            {**{k: v.half().float() for k, v in original.model.state_dict().items()}, **_heads(sd)},
            "cpu",
            torch.float32,
        )
        a = restored.decoder(tokens, restored.decoder.new_cache(features, 1))
        b = reference.decoder(tokens, reference.decoder.new_cache(features, 1))
        mel = torch.randn(1, 80, 3000)
        torch.testing.assert_close(restored.encoder(mel), reference.encoder(mel))
    torch.testing.assert_close(a, b)


def _heads(sd):
    return {k: v for k, v in sd.items() if k.endswith(".n_head")}


def test_conversion_is_cached_and_verified_once(fake_bundle, monkeypatch):
    _, parts, sha = fake_bundle
    weights.load_converted("fake", parts, sha)
    cached = list(weights.cache_dir().glob("fake-*.safetensors"))
    assert len(cached) == 1 and sha[:16] in cached[0].name
    # Second load reads the cache: the source is not even hashed again.
    monkeypatch.setattr(weights, "sha256_of", lambda paths: pytest.fail("source hashed again"))
    weights.load_converted("fake", parts, sha)


def test_wrong_sha256_is_refused(fake_bundle):
    _, parts, _ = fake_bundle
    with pytest.raises(WeightsIntegrityError, match="sha256"):
        weights.load_converted("fake", parts, "0" * 64)
    assert not list(weights.cache_dir().glob("*.safetensors")), "nothing unverified may be cached"


def test_damaged_cache_is_rebuilt(fake_bundle):
    _, parts, sha = fake_bundle
    weights.load_converted("fake", parts, sha)
    (cached,) = weights.cache_dir().glob("fake-*.safetensors")
    cached.write_bytes(cached.read_bytes()[:1000])  # as if a non-atomic writer had been killed
    sd = weights.load_converted("fake", parts, sha)
    assert "decoder.token_embedding.weight" in sd
    assert cached.stat().st_size > 1000


def test_killed_conversion_leaves_no_file(fake_bundle, monkeypatch):
    _, parts, sha = fake_bundle

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(weights, "save_file", killed)
    with pytest.raises(KeyboardInterrupt):
        weights.load_converted("fake", parts, sha)
    assert not any(weights.cache_dir().iterdir()), "neither a half file nor a temp file may remain"


def test_truncated_ct2_file_is_an_integrity_error():
    data = write_ct2({"a": np.zeros(4, np.float16)}, {})
    with pytest.raises(WeightsIntegrityError, match="truncated"):
        weights.read_ct2_model(data[:-3])


def test_hf_mapping_reproduces_transformers_logits():
    m = random_model(seed=12, dims=random_dims(n_state=32, n_head=4, n_layer=2))
    hf = to_transformers(m)
    ours = Whisper.from_state_dict(hf_to_state_dict(hf.state_dict(), hf.config), "cpu", torch.float32)
    mel = torch.randn(1, 80, 3000)
    tokens = torch.tensor([[50257, 5, 6, 7]])
    with torch.inference_mode():
        expected = hf(input_features=mel, decoder_input_ids=tokens).logits
        features = ours.encoder(mel)
        got = ours.decoder(tokens, ours.decoder.new_cache(features, 1))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_local_hf_directory_loads_through_the_registry(tmp_path):
    m = random_model(seed=13, dims=random_dims(n_state=32, n_head=4, n_layer=2))
    hf = to_transformers(m)
    directory = tmp_path / "tiny-hf"
    hf.save_pretrained(directory)
    shutil.copy(TINY_EN_TOKENIZER, directory / "tokenizer.json")
    loaded = load_model(str(directory))
    assert loaded.dims == m.dims
    assert loaded.tokenizer.eot == 50256 and not loaded.tokenizer.multilingual
    assert loaded.suppress_tokens_begin == m.suppress_tokens_begin
    features = torch.randn(1, 1500, 32)
    with torch.inference_mode():
        a = loaded.model.decoder(torch.tensor([[50257, 9]]), loaded.model.decoder.new_cache(features, 1))
        b = m.model.decoder(torch.tensor([[50257, 9]]), m.model.decoder.new_cache(features, 1))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_unknown_names_give_one_clear_line():
    with pytest.raises(ModelNotFoundError, match="unknown model 'nope'") as info:
        load_model("nope")
    assert "\n" not in str(info.value)
    with pytest.raises(ModelNotFoundError, match="openai/whisper-large-v3") as info:
        load_model("openai/whisper-large-v3")  # tests run offline: HF_HUB_OFFLINE=1 (conftest)
    assert "\n" not in str(info.value) and "offline" in str(info.value)


def test_registry_lists_bundled_models():
    infos = {i.name: i for i in list_models()}
    for name in BUNDLED:
        assert infos[name].available and infos[name].kind == "bundled"
    assert "openai/whisper-large-v3" in infos


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "n_vocab", "eot", "sot", "no_timestamps"),
    [("tiny.en", 51864, 50256, 50257, 50362), ("base", 51865, 50257, 50258, 50363)],
)
def test_bundled_models_and_their_tokenizers(name, n_vocab, eot, sot, no_timestamps):
    m = load_model(name)
    assert m.dims.n_vocab == n_vocab
    tok = m.tokenizer
    assert (tok.eot, tok.sot, tok.no_timestamps) == (eot, sot, no_timestamps)
    assert tok.multilingual == (name == "base")
    if tok.multilingual:
        assert tok.language_tokens["en"] == 50259 and tok.transcribe == 50359
        assert len(tok.languages) == 99
    assert Path(weights.cache_dir()).is_dir()
