from pathlib import Path

import pytest

from asrfleet.config import CT_PUNC, FSMN_VAD, PARAFORMER_LARGE, InstanceConfig


def test_defaults_are_the_hub_models_on_loopback():
    c = InstanceConfig.from_argv([])
    assert (c.host, c.port) == ("127.0.0.1", 6006)
    assert (c.model, c.vad_model, c.punc_model) == (PARAFORMER_LARGE, FSMN_VAD, CT_PUNC)


def test_argv_round_trip():
    c = InstanceConfig(
        port=6010,
        name="asr-4",
        model="/m a",
        vad_model="/v",
        punc_model=None,
        device="cpu",
        fp16=True,
        no_cuda_graphs=True,
        batch_size_s=120,
        max_file_size=2**20,
        max_duration_s=60.0,
        workers=3,
        threads=2,
        in_process=True,
        temp_dir=Path("/t"),
        model_cache=Path("/c"),
    )
    assert InstanceConfig.from_argv(c.to_argv()) == c


def test_no_punc_and_sizes():
    c = InstanceConfig.from_argv(["--no-punc", "--max-file-size", "500m"])
    assert c.punc_model is None and c.max_file_size == 500 * 2**20


def test_whisper_takes_no_vad_or_punc():
    c = InstanceConfig.from_argv(["--engine", "whisper"])
    assert (c.model, c.vad_model, c.punc_model) == ("large-v3", None, None)


@pytest.mark.parametrize(
    "argv, reason",
    [
        (["--port", "0"], "port must be positive"),
        (["--max-file-size", "lots"], "lots"),
        (["--engine", "kaldi"], "invalid choice: 'kaldi'"),
        (["--max-queue", "0"], "max_queue must be positive"),
    ],
)
def test_bad_arguments_exit_2_with_the_reason(argv, reason, capsys):
    with pytest.raises(SystemExit) as exited:
        InstanceConfig.from_argv(argv)
    assert exited.value.code == 2
    assert reason in capsys.readouterr().err
