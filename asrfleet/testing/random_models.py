"""Build FunASR model directories with random weights, for tests and benchmarks.

No model hub is reachable where the tests run, so the Paraformer and CT-Transformer punctuation
models are built here with FunASR's own classes. The transcripts are meaningless, but every line
of the real loading and inference code runs, and at ``size="large"`` the compute per second of
audio is Paraformer-large's (SANM encoder 50 blocks, d=512; decoder 16 blocks; vocab 8404).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml

if TYPE_CHECKING:
    import torch

# The first CJK characters: a vocabulary that tokenizes like Paraformer-large's Chinese one.
_CJK_START = 0x4E00


@dataclass(frozen=True)
class ParaformerSize:
    encoder_blocks: int
    decoder_blocks: int
    d_model: int
    ffn: int
    heads: int
    vocab: int


PARAFORMER_SIZES = {
    "tiny": ParaformerSize(encoder_blocks=2, decoder_blocks=1, d_model=64, ffn=128, heads=4, vocab=500),
    "large": ParaformerSize(encoder_blocks=50, decoder_blocks=16, d_model=512, ffn=2048, heads=4, vocab=8404),
}


def _vocabulary(size: int) -> list[str]:
    specials = ["<blank>", "<s>", "</s>"]
    chars = [chr(_CJK_START + i) for i in range(size - len(specials) - 1)]
    return specials + chars + ["<unk>"]


def _paraformer_config(size: ParaformerSize) -> dict:
    """Paraformer-large's configuration (BiCifParaformer, as on ModelScope) at the given sizes."""
    return {
        "model": "BiCifParaformer",
        "model_conf": {
            "ctc_weight": 0.0,
            "lsm_weight": 0.1,
            "length_normalized_loss": True,
            "predictor_weight": 1.0,
            "predictor_bias": 1,
            "sampling_ratio": 0.75,
        },
        "encoder": "SANMEncoder",
        "encoder_conf": {
            "output_size": size.d_model,
            "attention_heads": size.heads,
            "linear_units": size.ffn,
            "num_blocks": size.encoder_blocks,
            "dropout_rate": 0.1,
            "positional_dropout_rate": 0.1,
            "attention_dropout_rate": 0.1,
            "input_layer": "pe",
            "pos_enc_class": "SinusoidalPositionEncoder",
            "normalize_before": True,
            "kernel_size": 11,
            "sanm_shfit": 0,
            "selfattention_layer_type": "sanm",
        },
        "decoder": "ParaformerSANMDecoder",
        "decoder_conf": {
            "attention_heads": size.heads,
            "linear_units": size.ffn,
            "num_blocks": size.decoder_blocks,
            "dropout_rate": 0.1,
            "positional_dropout_rate": 0.1,
            "self_attention_dropout_rate": 0.1,
            "src_attention_dropout_rate": 0.1,
            "att_layer_num": size.decoder_blocks,
            "kernel_size": 11,
            "sanm_shfit": 0,
        },
        "predictor": "CifPredictorV3",
        "predictor_conf": {
            "idim": size.d_model,
            "threshold": 1.0,
            "l_order": 1,
            "r_order": 1,
            "tail_threshold": 0.45,
            "smooth_factor2": 0.25,
            "noise_threshold2": 0.01,
            "upsample_times": 3,
            "use_cif1_cnn": False,
            "upsample_type": "cnn_blstm",
        },
        "frontend": "WavFrontend",
        "frontend_conf": {
            "fs": 16000,
            "window": "hamming",
            "n_mels": 80,
            "frame_length": 25,
            "frame_shift": 10,
            "lfr_m": 7,
            "lfr_n": 6,
            "dither": 0.0,
        },
        "tokenizer": "CharTokenizer",
        "tokenizer_conf": {"unk_symbol": "<unk>", "split_with_space": True},
        "normalize": None,
    }


def _write_cmvn(path: Path, dim: int) -> None:
    """A Kaldi-nnet CMVN file as FunASR reads it: typical log-mel mean and spread."""
    shift = " ".join(["-9.0"] * dim)
    scale = " ".join(["0.25"] * dim)
    path.write_text(
        "<Nnet>\n"
        f"<Splice> {dim} {dim}\n[ 0 ]\n"
        f"<AddShift> {dim} {dim}\n<LearnRateCoef> 0 [ {shift} ]\n"
        f"<Rescale> {dim} {dim}\n<LearnRateCoef> 0 [ {scale} ]\n"
        "</Nnet>\n",
        encoding="utf-8",
    )


def _build(model_class_name: str, config: dict, vocab: list[str], seed: int) -> torch.nn.Module:
    import torch
    from funasr.register import tables

    torch.manual_seed(seed)
    model_class = tables.model_classes.get(model_class_name)
    if model_class is None:  # FunASR skips a model module that fails to import, and says so only here
        import funasr

        failed = funasr.get_import_errors().items()
        errors = [f"{name}: {error}" for name, error in failed if ".models." in name]
        raise RuntimeError(
            f"FunASR has no model class {model_class_name}; its model modules that failed to import: "
            + ("; ".join(errors) or "none")
        )
    kwargs = {**config.get("model_conf", {}), **config, "vocab_size": len(vocab), "input_size": 560}
    return model_class(**kwargs)


def _save(model: torch.nn.Module, out: Path) -> None:
    import torch

    torch.save(model.state_dict(), out / "model.pt")


def _without_timestamps(config: dict) -> dict:
    """Plain Paraformer: the same encoder, predictor and decoder without BiCifParaformer's
    timestamp head (its predictor's upsampling and LSTM), as FunASR's `paraformer` template."""
    conf = config["predictor_conf"]
    kept = ("idim", "threshold", "l_order", "r_order", "tail_threshold")
    return {
        **config,
        "model": "Paraformer",
        "predictor": "CifPredictorV2",
        "predictor_conf": {key: conf[key] for key in kept},
    }


MODEL_CLASSES = ("BiCifParaformer", "Paraformer")


def build_paraformer(
    out: Path | str, size: str = "tiny", seed: int = 0, model_class: str = "BiCifParaformer"
) -> Path:
    """Write a Paraformer model directory (config.yaml, model.pt, tokens.json, am.mvn):
    BiCifParaformer, as Paraformer-large is published, or plain Paraformer (`MODEL_CLASSES`)."""
    import funasr  # noqa: F401  (registers FunASR's model classes)

    if model_class not in MODEL_CLASSES:
        raise ValueError(f"model_class must be one of {MODEL_CLASSES}, not {model_class!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dims = PARAFORMER_SIZES[size]
    config = _paraformer_config(dims)
    if model_class == "Paraformer":
        config = _without_timestamps(config)
    vocab = _vocabulary(dims.vocab)
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    (out / "tokens.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    _write_cmvn(out / "am.mvn", 560)
    _save(_build(model_class, config, vocab, seed), out)
    return out


def built_paraformer(work: Path | str, size: str, model_class: str = MODEL_CLASSES[0]) -> Path:
    """The model of this size and class under `work`, built there the first time it is asked for.
    Each class has a folder of its own: BiCifParaformer's is "paraformer-SIZE", the others' add
    the class's name."""
    suffix = "" if model_class == MODEL_CLASSES[0] else f"-{model_class.lower()}"
    folder = Path(work) / f"paraformer-{size}{suffix}"
    if not (folder / "model.pt").exists():
        build_paraformer(folder, size=size, model_class=model_class)
    return folder


def build_ct_punc(out: Path | str, vocab_size: int = 600, seed: int = 0) -> Path:
    """Write a small CT-Transformer punctuation model directory (FunASR's template layout)."""
    import funasr  # noqa: F401

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "model": "CTTransformer",
        "model_conf": {
            "ignore_id": 0,
            "embed_unit": 64,
            "att_unit": 64,
            "dropout_rate": 0.1,
            "punc_list": ["<unk>", "_", "，", "。", "？", "、"],
            "punc_weight": [1.0] * 6,
            "sentence_end_id": 3,
        },
        "encoder": "SANMEncoder",
        "encoder_conf": {
            "input_size": 64,
            "output_size": 64,
            "attention_heads": 4,
            "linear_units": 128,
            "num_blocks": 1,
            "dropout_rate": 0.1,
            "positional_dropout_rate": 0.1,
            "attention_dropout_rate": 0.0,
            "input_layer": "pe",
            "pos_enc_class": "SinusoidalPositionEncoder",
            "normalize_before": True,
            "kernel_size": 11,
            "sanm_shfit": 0,
            "selfattention_layer_type": "sanm",
            "padding_idx": 0,
        },
        "tokenizer": "CharTokenizer",
        "tokenizer_conf": {"unk_symbol": "<unk>"},
    }
    vocab = ["<blank>", "<s>", "</s>"] + [chr(_CJK_START + i) for i in range(vocab_size - 4)] + ["<unk>"]
    text = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    (out / "config.yaml").write_text(text, encoding="utf-8")
    (out / "tokens.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    model = _build("CTTransformer", config, vocab, seed)
    import torch

    with torch.no_grad():
        # Class 0 is "<unk>", which a trained model never predicts; random weights would.
        model.decoder.bias[0] = -1e4
    _save(model, out)
    return out


def random_audio(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise bursts with pauses: something for a VAD to cut, at 16 kHz."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000)
    audio = np.zeros(n, dtype=np.float32)
    pos = 0
    while pos < n:
        burst = int(rng.uniform(0.8, 3.0) * 16000)
        audio[pos : pos + burst] = rng.normal(0, 0.1, size=min(burst, n - pos))
        pos += burst + int(rng.uniform(0.6, 1.2) * 16000)
    return audio
