"""The test models' builder: a class FunASR did not register is a clear error, with the reason."""

from __future__ import annotations

import pytest

from asrfleet.random_models import _build


def test_a_model_class_funasr_lacks_is_named_with_its_import_errors():
    with pytest.raises(RuntimeError, match="FunASR has no model class NoSuchParaformer; its model modules"):
        _build("NoSuchParaformer", {}, ["<blank>"], seed=0)
