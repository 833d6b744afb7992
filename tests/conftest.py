"""Shared pytest fixtures and the fast lane's boundary.

Each area keeps its fixtures in ``tests/fixtures/<area>.py``; every test here starts with the
interpreter's ``print`` (:func:`_the_interpreters_print`). The hook below marks the tests
that run real work (NeMo training, the whole DAG, the GCS emulator server, speech synthesis,
CLI runs that are killed or raced) as ``integration``: ``make test-fast`` leaves them out,
``make test`` (what CI runs) and a plain ``pytest`` run them. The lists say which tests, and
why, in one place; a test file needs no decorator (tests/test_fast_lane.py checks that every
module and test named there exists).
"""

from __future__ import annotations

import builtins
import importlib.util
from collections.abc import Iterator

import pytest

pytest_plugins = [
    name
    for name in (
        "tests.fixtures.corpus",
        "tests.fixtures.gcs",
        "tests.fixtures.shards",
        "tests.fixtures.models",
    )
    if importlib.util.find_spec(name) is not None
]

_PRINT = builtins.print  # the interpreter's, before any test ran


@pytest.fixture(autouse=True)
def _the_interpreters_print() -> Iterator[None]:
    """Every test starts and ends with the interpreter's ``print``.

    kfp.local swaps ``builtins.print`` for an indenting one around each task it runs, and runs
    the tasks of a ParallelFor in threads whose swaps can interleave and leave an indenting
    one in place (pipelines/local_run.py restores it after the DAG for the same reason): every
    later ``print`` in the process, a traceback's too, would then write runs of spaces.
    """
    builtins.print = _PRINT
    yield
    builtins.print = _PRINT


INTEGRATION = "integration"
# every test of these modules
INTEGRATION_MODULES = {
    "tests/pipelines/test_local_run.py": "the whole DAG through kfp.local",
    "tests/components/test_finetune.py": "restores, re-vocabularies and fine-tunes NeMo models",
    "tests/pipelines/test_local_run_mixture.py": "the mixture variant of the DAG through kfp.local",
}
# every test that uses one of these fixtures
INTEGRATION_FIXTURES = {
    "bundled_eval_manifest": "a validation set for NeMo: training (DDP, torchrun, kfp.local) and evaluation",
    "trained_run": "a NeMo training run",
    "gcs_emulator": "the GCS emulator server",
    "tiny_nemo_model": "builds and saves a NeMo model",
    "constant_nemo_model": "builds and saves NeMo models",
    "make_corpus": "synthesises a corpus with espeak-ng and flite",
    "bpe_tokenizer": "trains a SentencePiece tokenizer",
    "bpe_nemo_model": "builds and saves NeMo models",
}
# every test parametrized with this argument name
INTEGRATION_PARAMETERS = {
    "where": "asrflow CLI runs killed or raced on one output directory, locally and on gs://",
}
# every test with this parameter value (the fixture asks for the emulator at run time)
INTEGRATION_PARAMETER_VALUES = {"gcs": "gs:// paths on the GCS emulator server"}
# single tests doing the same without a fixture that says so (module::function)
INTEGRATION_TESTS = {
    "tests/components/test_shards.py::test_kill_and_rerun_gives_the_same_bytes": "kills an asrflow run",
    "tests/components/test_corpus.py::test_bundled_corpus_is_what_the_generator_makes": "synthesises speech",
    "tests/components/test_corpus.py::test_cli_help_and_run": "synthesises speech",
    "tests/components/test_families.py::test_every_shipped_config_builds_its_family": (
        "builds every shipped config's NeMo model"
    ),
    "tests/components/test_train.py::test_the_pipelines_tokenizer_step_is_keyed_by_the_training_text": (
        "kfp.local tasks and NeMo's SentencePiece trainer"
    ),
}


def integration_reason(item: pytest.Item) -> str | None:
    """Why ``item`` is an integration test, or None for a unit test (the fast lane's)."""
    module = item.nodeid.split("::", 1)[0]
    if module in INTEGRATION_MODULES:
        return INTEGRATION_MODULES[module]
    function = f"{module}::{getattr(item, 'originalname', item.name)}"
    if function in INTEGRATION_TESTS:
        return INTEGRATION_TESTS[function]
    for fixture in getattr(item, "fixturenames", ()):
        if fixture in INTEGRATION_FIXTURES:
            return INTEGRATION_FIXTURES[fixture]
    params = getattr(getattr(item, "callspec", None), "params", {})
    for name, value in params.items():
        if name in INTEGRATION_PARAMETERS:
            return INTEGRATION_PARAMETERS[name]
        if isinstance(value, str) and value in INTEGRATION_PARAMETER_VALUES:
            return INTEGRATION_PARAMETER_VALUES[value]
    return None


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Marks the integration tests (see the lists above); ``-m 'not integration'`` leaves them out."""
    for item in items:
        if item.get_closest_marker(INTEGRATION) is None and (reason := integration_reason(item)):
            item.add_marker(pytest.mark.integration(reason=reason))
