"""The compiled pipeline, once per GPU pool, for the tests that read it."""

from __future__ import annotations

import pytest

from pipelines.asr_training import compile_pipeline
from tests.pipelines.compiled import Compiled


@pytest.fixture(scope="module", params=["v100", "a100"])
def compiled(request, tmp_path_factory) -> tuple[str, Compiled]:
    path = compile_pipeline(str(tmp_path_factory.mktemp("compiled") / "asrflow.yaml"), gpu=request.param)
    return request.param, Compiled(path)
