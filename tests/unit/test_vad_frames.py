"""`vad_frames.frame_state` decides every frame as FunASR's `GetFrameState` does (real fsmn-vad)."""

from __future__ import annotations

import copy
from collections import Counter

import numpy as np
import pytest
import torch

from asrfleet.engines.funasr import vad_frames
from asrfleet.random_models import random_audio

FRAMES = 60


@pytest.fixture(scope="module")
def vad(vad_dir):
    from funasr import AutoModel

    quiet = {"disable_update": True, "disable_pbar": True, "disable_log": True}
    return AutoModel(model=str(vad_dir), device="cpu", **quiet)


def _case(model: torch.nn.Module, seed: int, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A recording's state as the detector sees it, with options and values drawn around every
    threshold: scores near both edges, loud and quiet frames, frames past the end."""
    rng = np.random.default_rng(seed)
    opts = model.vad_opts
    ids = [0, 1] if seed % 3 == 0 else [0]
    monkeypatch.setattr(opts, "silence_pdf_num", len(ids))
    monkeypatch.setattr(opts, "decibel_thres", float(rng.choice([-100.0, -40.0])))
    monkeypatch.setattr(opts, "snr_thres", float(rng.choice([-100.0, 5.0])))
    monkeypatch.setattr(opts, "speech_2_noise_ratio", float(rng.choice([1.0, 0.6])))
    monkeypatch.setattr(opts, "output_frame_probs", bool(seed % 2))
    cache: dict = {}
    model.init_cache(cache)
    stats = cache["stats"]
    stats.sil_pdf_ids = ids
    stats.speech_noise_thres = float(rng.uniform(-0.3, 0.8))
    stats.decibel = rng.uniform(-110.0, 0.0, FRAMES).tolist()
    scores = rng.uniform(0.0, 1.0, (1, FRAMES, 248)).astype(np.float32)
    scores[0, :, : len(ids)] = rng.uniform(0.001, 0.999 / len(ids), (FRAMES, len(ids)))
    stats.scores = torch.from_numpy(scores)
    return cache


def _outcome(state, cache: dict) -> tuple:
    stats = cache["stats"]
    probs = [(p.noise_prob, p.speech_prob, p.score, p.frame_id) for p in stats.frame_probs]
    return state, stats.noise_average_decibel, probs


@pytest.mark.parametrize("seed", range(12))
def test_every_frame_is_decided_as_funasr_decides_it(vad, seed, monkeypatch):
    from funasr.models.fsmn_vad_streaming.model import FsmnVADStreaming

    model = vad.model
    theirs = _case(model, seed, monkeypatch)
    ours = copy.deepcopy(theirs)
    for t in range(FRAMES + 2):
        expected = _outcome(FsmnVADStreaming.GetFrameState(model, t, cache=theirs), theirs)
        assert _outcome(vad_frames.frame_state(model, t, ours), ours) == expected, t


def test_every_branch_is_taken(vad, monkeypatch):
    """The cases above reach each way out: past the end, too quiet, speech, speech too close to the
    noise, and silence with the noise level started and then updated."""
    from funasr.models.fsmn_vad_streaming.model import FrameState

    model = vad.model
    seen: Counter = Counter()
    for seed in range(12):
        with monkeypatch.context() as patch:
            cache = _case(model, seed, patch)
            stats, opts = cache["stats"], model.vad_opts
            for t in range(FRAMES + 2):
                noise_before = stats.noise_average_decibel
                state = vad_frames.frame_state(model, t, cache)
                if t >= FRAMES:
                    seen["past the end"] += 1
                elif stats.decibel[t] < opts.decibel_thres:
                    seen["quiet"] += 1
                elif state == FrameState.kFrameStateSpeech:
                    seen["speech"] += 1
                elif stats.noise_average_decibel == noise_before:
                    seen["speech under the SNR threshold"] += 1
                elif noise_before < -99.9:
                    seen["noise level started"] += 1
                else:
                    seen["noise level updated"] += 1
            seen["two silence ids"] += len(stats.sil_pdf_ids) == 2
            seen["frame probabilities"] += bool(stats.frame_probs)
    assert len(seen) == 8 and min(seen.values()) > 0, seen


def test_whole_recordings_keep_their_segments(vad):
    """Short ones, and one over the VAD's 60 s chunk, whose scores FunASR concatenates chunk by chunk."""
    from funasr.models.fsmn_vad_streaming.model import FsmnVADStreaming

    recordings = [random_audio(seconds, seed) for seed, seconds in enumerate((4.0, 11.0, 130.0))]
    vad.model.GetFrameState = FsmnVADStreaming.GetFrameState.__get__(vad.model)
    theirs = [vad.generate(input=samples)[0]["value"] for samples in recordings]
    assert vad_frames.install(vad.model)
    ours = [vad.generate(input=samples)[0]["value"] for samples in recordings]
    assert ours == theirs and all(theirs)


def test_other_models_are_left_alone():
    model = torch.nn.Linear(2, 2)
    assert not vad_frames.install(model) and not hasattr(model, "GetFrameState")
