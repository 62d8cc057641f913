"""The test models' builder: either Paraformer class, each in a folder of its own; a class FunASR
did not register is a clear error, with the reason."""

from __future__ import annotations

import pytest
import yaml

from asrfleet.testing.random_models import _build, build_paraformer, built_paraformer


def test_a_model_class_funasr_lacks_is_named_with_its_import_errors():
    with pytest.raises(RuntimeError, match="FunASR has no model class NoSuchParaformer; its model modules"):
        _build("NoSuchParaformer", {}, ["<blank>"], seed=0)


def test_each_model_class_is_built_once_in_a_folder_of_its_own(tmp_path):
    bicif = built_paraformer(tmp_path, "tiny")
    plain = built_paraformer(tmp_path, "tiny", "Paraformer")
    assert bicif != plain
    assert yaml.safe_load((bicif / "config.yaml").read_text())["model"] == "BiCifParaformer"
    config = yaml.safe_load((plain / "config.yaml").read_text())
    assert config["model"] == "Paraformer" and config["predictor"] == "CifPredictorV2"
    assert "upsample_times" not in config["predictor_conf"]  # no timestamp head
    built = (plain / "model.pt").stat().st_mtime_ns
    assert built_paraformer(tmp_path, "tiny", "Paraformer") == plain
    assert (plain / "model.pt").stat().st_mtime_ns == built  # found, not built again


def test_an_unknown_model_class_is_refused(tmp_path):
    with pytest.raises(ValueError, match="model_class must be one of"):
        build_paraformer(tmp_path, model_class="SeacoParaformer")
