"""The bucketed encoder/decoder path that CUDA graphs replay, run eagerly on the CPU.

Graphs themselves need a GPU (`python -m benchmarks.recognizer --graphs` compares them with the
eager path there); what can go wrong on any machine is the padding to bucket shapes, and that
must change no transcript.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asrfleet.engines.funasr import graphs
from asrfleet.engines.funasr.recognize import Recognizer


@pytest.fixture(scope="module")
def model_and_tokenizer(model_dirs):
    from funasr import AutoModel

    model, kwargs = AutoModel.build_model(
        model=str(model_dirs["asr"]), device="cpu", disable_update=True, disable_log=True
    )
    return model, kwargs["tokenizer"]


def batches(seed: int = 1) -> list[list[np.ndarray]]:
    """Batches of 1 to 13 segments of 5 to 300 encoder frames (0.3 to 18 s)."""
    rng = np.random.default_rng(seed)
    return [
        [rng.standard_normal((int(n), 560), dtype=np.float32) for n in rng.integers(5, 300, size)]
        for size in (1, 2, 3, 5, 7, 13)
    ]


@pytest.mark.parametrize(
    ("n", "bucket"), [(1, 16), (16, 16), (17, 32), (65, 96), (75, 96), (128, 128), (129, 160), (257, 320)]
)
def test_frames_round_up_to_their_bucket(n, bucket):
    assert graphs.round_up(n, graphs.FRAME_STEPS) == bucket


def test_past_the_last_bucket_there_is_none():
    assert graphs.round_up(513, graphs.FRAME_STEPS) is None
    assert graphs.items_bucket(3) == 4 and graphs.items_bucket(5) == 6
    assert graphs.items_bucket(513) is None


def test_fill_padded_zeroes_around_the_values():
    slots = graphs.Slots(torch.device("cpu"), {"x": (12, torch.float32)}, staged=("x",))
    slots.stage("x", np.full((3, 4), 7.0, dtype=np.float32))
    slots.fill_padded("x", (2, 3), torch.ones(1, 2))
    assert slots.view("x", (2, 3)).tolist() == [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]


def test_features_padded_into_a_used_buffer_leave_nothing_of_the_last_batch():
    rng = np.random.default_rng(3)
    feats = [rng.standard_normal((n, 560), dtype=np.float32) for n in (7, 3)]
    used = np.full((4, 9, 560), 5.0, dtype=np.float32)  # what a larger batch left in the buffer
    padded = graphs.pad_features(feats, 4, 9, out=used)
    assert padded is used
    assert np.array_equal(padded, graphs.pad_features(feats, 4, 9))
    assert np.array_equal(padded[0, :7], feats[0]) and not padded[0, 7:].any() and not padded[2:].any()


def test_staged_inputs_reach_their_slot():
    sizes = {"x": (12, torch.float32), "y": (4, torch.int64)}
    slots = graphs.Slots(torch.device("cpu"), sizes, staged=("x",))
    slots.stage("x", np.arange(6, dtype=np.float32).reshape(2, 3))
    assert slots.view("x", (2, 3)).tolist() == [[0, 1, 2], [3, 4, 5]]
    slots.host("x", (3, 2))[...] = 7
    assert slots.view("x", (3, 2)).tolist() == [[0, 1], [2, 3], [4, 5]]  # not before `send`
    slots.send("x", (3, 2))
    assert slots.view("x", (3, 2)).tolist() == [[7, 7]] * 3


def test_the_predictors_weights_with_their_tail_are_funasrs(model_and_tokenizer, monkeypatch):
    """`cif_weights` repeats `tail_process_fn`'s arithmetic (that function builds a zero frame on
    the host, which a CUDA graph cannot hold): the weights and token counts must be FunASR's."""
    model, _ = model_and_tokenizer
    p = model.predictor
    assert p.tail_threshold > 0.0
    lengths = torch.tensor([40, 17, 33])
    encoded = torch.randn(3, 40, model.encoder.output_size(), generator=torch.Generator().manual_seed(4))
    mask = (torch.arange(40)[None, :] < lengths[:, None]).float()
    encoded = encoded * mask[:, :, None]
    with torch.inference_mode():
        ours, token_num = graphs.cif_weights(p, encoded, mask)
        monkeypatch.setattr(p, "tail_threshold", 0.0)
        untailed, sums = graphs.cif_weights(p, encoded, mask)
        monkeypatch.undo()
        hidden, theirs, their_num = p.tail_process_fn(encoded, untailed, sums, mask=mask)
    assert torch.equal(ours, theirs) and torch.equal(token_num, their_num)
    assert torch.equal(graphs.with_tail_frame(p, encoded), hidden)
    assert ours[1, 17] > 0 and not ours[1, 18:].any()  # the tail sits right after each row's end


def test_the_test_model_is_supported_and_others_are_not(model_and_tokenizer):
    model, _ = model_and_tokenizer
    assert graphs.supports(model)
    assert not graphs.supports(torch.nn.Linear(2, 2))


def test_padding_to_buckets_changes_no_transcript(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    eager = Recognizer(model, tokenizer, "cpu")
    bucketed = Recognizer(model, tokenizer, "cpu")
    assert bucketed.use_graphs(max_frames=16 * 320, capture=False)  # room for the largest batch
    segments = 0
    for feats in batches():
        expected = eager(feats)
        assert bucketed(feats) == expected
        segments += len(feats)
    assert segments == 31 and any(r.text for r in expected)
    assert bucketed.graphs.stats.eager == 0  # every batch took the bucketed path


def test_batches_over_the_frame_limit_run_eagerly(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    eager = Recognizer(model, tokenizer, "cpu")
    bucketed = Recognizer(model, tokenizer, "cpu")
    bucketed.use_graphs(max_frames=256, capture=False)
    small, large = batches(seed=2)[1], batches(seed=2)[4]  # 2 and 7 segments
    assert bucketed(small[:1]) == eager(small[:1])
    assert bucketed(large) == eager(large)
    assert bucketed.graphs.stats.eager == 1


def test_a_shape_borrows_the_smallest_larger_recorded_graph():
    recorded = [("encode", 16, 320), ("encode", 12, 128), ("encode", 8, 96), ("decode", 12, 128, 32)]
    assert graphs.larger_recorded(("encode", 8, 96), recorded) == ("encode", 8, 96)
    assert graphs.larger_recorded(("encode", 8, 80), recorded) == ("encode", 8, 96)
    assert graphs.larger_recorded(("encode", 12, 96), recorded) == ("encode", 12, 128)
    assert graphs.larger_recorded(("encode", 12, 96), recorded, up_to=1.2) is None  # too much padding
    assert graphs.larger_recorded(("encode", 24, 64), recorded) is None  # more segments than any
    assert graphs.larger_recorded(("decode", 8, 96, 16), recorded) is None  # 4 times the size
    assert graphs.larger_recorded(("decode", 8, 96, 16), recorded, up_to=4) == ("decode", 12, 128, 32)
    assert graphs.larger_recorded(("decode", 12, 128, 48), recorded) is None  # more tokens


def test_a_shape_that_keeps_coming_gets_its_own_graph(model_and_tokenizer):
    model, _ = model_and_tokenizer
    model_graphs = graphs.GraphedModel(model, torch.device("cpu"), torch.no_grad, capture=False)
    model_graphs._graphs[("encode", 16, 128)] = None  # as if recorded
    own = ("encode", 12, 128)
    chosen = [model_graphs._choose(own) for _ in range(graphs.RECORD_AFTER + 1)]
    assert chosen[: graphs.RECORD_AFTER - 1] == [("encode", 16, 128)] * (graphs.RECORD_AFTER - 1)
    assert chosen[graphs.RECORD_AFTER - 1 :] == [own, own]
    assert model_graphs.stats.borrowed == graphs.RECORD_AFTER - 1


def test_a_batch_run_at_a_borrowed_larger_shape_keeps_its_transcript(model_and_tokenizer, monkeypatch):
    model, tokenizer = model_and_tokenizer
    eager = Recognizer(model, tokenizer, "cpu")
    borrowing = Recognizer(model, tokenizer, "cpu")
    assert borrowing.use_graphs(max_frames=24 * 384, capture=False)
    monkeypatch.setattr(graphs, "BORROW_UP_TO", 1000.0)
    # as if recorded: shapes larger than every batch's own (segments, frames and tokens padded far)
    borrowing.graphs._graphs.update({("encode", 24, 384): None, ("decode", 24, 384, 384): None})
    for feats in batches():
        assert borrowing(feats) == eager(feats)
    assert borrowing.graphs.stats.borrowed == 2 * len(batches())  # the encoder's and the decoder's


@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="needs a GPU")
def test_the_gpu_thread_never_waits_for_the_stream_to_drain(model_dirs):
    """Between a batch's CUDA events, nothing the GPU thread does waits for the GPU (a pageable
    copy, a tensor read on the host): it would let the GPU run dry (`transfers.py`)."""
    from funasr import AutoModel

    model, kwargs = AutoModel.build_model(
        model=str(model_dirs["asr"]), device="cuda:0", disable_update=True, disable_log=True
    )
    recognizer = Recognizer(model, kwargs["tokenizer"], "cuda:0", fp16=True)
    assert recognizer.use_graphs()
    work = batches()[:4]
    for _ in range(graphs.RECORD_AFTER + 1):  # every shape has its own graph: none is recorded below
        expected = [recognizer(feats) for feats in work]
    recorded = recognizer.graphs.recorded
    torch.cuda.set_sync_debug_mode("error")  # a synchronizing call raises
    try:
        parts = [recognizer.run(feats) for feats in work]
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert [recognizer.texts(part) for part in parts] == expected
    assert recognizer.graphs.recorded == recorded
