"""asrflow train against hostile paths, damaged shards, hung storage and untrusted checkpoints.

Issue 12, items 1, 2 and the checkpoint part of 5. Training runs are real ``asrflow``
processes on the tiny config (a few steps each); gs:// runs use the GCS emulator.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import tarfile
import textwrap
import time
from pathlib import Path

import pytest

from components import manifest, storage
from components.train import checkpoints, data
from tests.components.test_train import (
    ASRFLOW,
    RUN_TIMEOUT_S,
    asrflow_env,
    explain,
    gcs_validation_set,
    last_json_line,
    run_asrflow,
    train_args,
)

# --- helpers ---------------------------------------------------------------------------------


def upload_tree(local: Path, uri: str) -> None:
    for path in sorted(local.rglob("*")):
        if path.is_file():
            storage.upload_file(path, storage.join(uri, str(path.relative_to(local))))


def copy_shards(bundled_shards: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(bundled_shards, target)
    return target


def inflate_member_size(tar_path: Path, member_index: int) -> str:
    """Rewrite member ``member_index``'s header to claim 100 MB more data than the file holds.

    The first header and the end-of-archive blocks stay intact, so the check before training
    passes; NeMo's reader hits ``tarfile.ReadError`` ("unexpected end of data") at that member.
    """
    with tarfile.open(tar_path, "r:") as tar:
        member = tar.getmembers()[member_index]
    with open(tar_path, "r+b") as stream:
        stream.seek(member.offset)
        header = bytearray(stream.read(tarfile.BLOCKSIZE))
        header[124:136] = b"%011o\0" % (member.size + 100_000_000)
        header[148:156] = b"        "
        header[148:156] = b"%06o\0 " % sum(header)
        stream.seek(member.offset)
        stream.write(header)
    return member.name


def wait_for(path: Path, text: str, process: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if text in path.read_text(errors="replace"):
            return True
        time.sleep(0.05)
    return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"))


HANG_SITECUSTOMIZE = textwrap.dedent(
    """
    # Test double for storage that stopped answering: in `python -m components.train.cat`
    # (the pipe: reader of gs:// shards) every read hangs. Other processes are untouched.
    import os
    import sys
    import time

    if sys.orig_argv[1:3] == ["-m", "components.train.cat"]:
        import components.storage

        def _hang(uri):
            with open(os.environ["ASRFLOW_TEST_HANG_PIDS"], "a") as out:
                out.write(f"{os.getpid()}\\n")
            time.sleep(600)

        components.storage.open_read = _hang
    """
)


@pytest.fixture
def hung_gcs_training(bundled_shards: Path, bundled_eval_manifest: Path, gcs_bucket: str, tmp_path: Path):
    """argv and environment of a gs:// training run whose shard reads hang."""
    shards = storage.join(gcs_bucket, "tarred")
    upload_tree(bundled_shards, shards)
    val = gcs_validation_set(bundled_eval_manifest, storage.join(gcs_bucket, "validation"))
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HANG_SITECUSTOMIZE)
    pids = tmp_path / "cat-pids"
    env = {
        **asrflow_env(),
        "PYTHONPATH": os.pathsep.join([str(hook), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "ASRFLOW_TEST_HANG_PIDS": str(pids),
        "ASRFLOW_SCRATCH": str(tmp_path / "scratch"),
    }
    argv = [ASRFLOW, *train_args(shards, val, tmp_path / "run")]
    argv = [str(a) for a in argv]
    yield argv, env, pids
    if pids.exists():  # never leave a hung reader behind, whatever the outcome
        for line in pids.read_text().split():
            try:
                os.kill(int(line), signal.SIGKILL)
            except ProcessLookupError:
                pass


# --- item 1: paths that reach a shell, or NeMo's brace expansion -------------------------------

HOSTILE_NAMES = {
    "semicolon": "r;touch {marker};echo ",
    "single quote": "it's",
    "double quote": 'say "hi"',
    "variables": "$HOME$PATH",
    "backticks": "`touch {marker}`",
    "spaces": "with  two spaces",
    "pipe and ampersand": "a|touch {marker}&b",
    "glob and dollar": "star*$HOME?",
}


def test_hostile_gcs_names_stream_through_the_quoted_pipe_and_run_nothing(
    bundled_shards: Path, gcs_bucket: str, tmp_path: Path
):
    """Every name streams through NeMo's own tarred iterator (brace expansion, Lhotse's
    shell=True pipe) to the right utterances, and no injected command runs."""
    from lhotse.serialization import open_best
    from nemo.collections.common.data.lhotse.nemo_adapters import LazyNeMoTarredIterator

    marker = tmp_path / "injected"
    expected = {
        e["audio_filepath"]
        for e in manifest.read_manifest(str(bundled_shards / "sharded_manifests" / "manifest_0.json"))
    }
    for label, name in HOSTILE_NAMES.items():
        uri = storage.join(gcs_bucket, name.format(marker=marker), "tarred")
        upload_tree(bundled_shards, uri)
        dataset = data.open_tarred_dataset(uri, str(tmp_path / "local" / label.replace(" ", "_")))
        cuts = LazyNeMoTarredIterator(dataset.manifest_filepath, dataset.tarred_audio_filepaths)
        try:
            first = next(iter(cuts))
        except Exception as err:  # noqa: BLE001 - a broken command line; checked below
            first = err
        assert not marker.exists(), f"{label}: the injected command ran"
        assert not isinstance(first, Exception), f"{label}: {first}"
        assert first.supervisions[0].text and first.duration > 0, label
        assert dataset.shard_ids == (0, 1, 2, 3), label
        with tarfile.open(fileobj=open_best(dataset.tar_paths[0], "rb"), mode="r|*") as tar:
            names = {info.name for info in tar}
        assert names == expected, label


@pytest.mark.parametrize(
    ("name", "named"),
    [
        ("line\nbreak", "'\\n'"),
        ("carriage\rreturn", "'\\r'"),
        ("tab\there", "'\\t'"),
        ("data (1)", "'('"),
        ("set[2]", "'['"),
        ("a<b", "'<'"),
        ("{x}", "'{'"),
        ("$(touch x)", "'('"),
        ("old_OP_new", "'_OP_'"),
    ],
)
def test_names_nemo_or_gcs_cannot_take_are_refused_naming_the_character(
    name: str, named: str, tmp_path: Path
):
    for uri in (f"gs://bucket/{name}/tarred", str(tmp_path / name / "tarred")):
        with pytest.raises(data.DataError, match="cannot be used") as err:
            data.open_tarred_dataset(uri, str(tmp_path / "local"))
        assert named in str(err.value) and repr(uri) in str(err.value)


def test_a_local_dataset_under_a_rewritten_name_is_refused_not_misread(
    bundled_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    copy = copy_shards(bundled_shards, tmp_path / "corpus (v2)" / "tarred")
    with pytest.raises(data.DataError, match=r"the character '\(' at position \d+ cannot be used"):
        data.open_tarred_dataset(str(copy), str(tmp_path / "local"))
    # a relative path is made absolute: Lhotse never sees "pipe:…" or a URL-looking name
    monkeypatch.chdir(bundled_shards.parent)
    dataset = data.open_tarred_dataset("tarred", str(tmp_path / "local"))
    assert dataset.tarred_audio_filepaths == str(bundled_shards / "audio__OP_0..3_CL_.tar")


def test_train_on_a_hostile_gcs_path_streams_and_runs_no_injected_command(
    bundled_shards: Path, bundled_eval_manifest: Path, gcs_bucket: str, tmp_path: Path
):
    marker = tmp_path / "pwned"
    prefix = f"r;touch {marker};echo `touch {marker}` $HOME"  # quotes: see the test above
    shards = storage.join(gcs_bucket, prefix, "tarred")
    upload_tree(bundled_shards, shards)
    val = gcs_validation_set(bundled_eval_manifest, storage.join(gcs_bucket, "validation"))
    env = {**asrflow_env(), "ASRFLOW_SCRATCH": str(tmp_path / "scratch")}
    try:
        result: subprocess.CompletedProcess[str] | None = subprocess.run(
            [ASRFLOW, *train_args(shards, val, tmp_path / "run", "trainer.max_steps=2")],  # type: ignore[arg-type]
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        result = None
    assert not marker.exists(), "a command injected through the shard path ran"
    assert result is not None, f"no step within {RUN_TIMEOUT_S}s"
    assert result.returncode == 0, explain(result)
    card = last_json_line(result.stdout)
    assert card["steps"] == 2 and card["dataset"] == shards and card["bad_shards"] == []


# --- item 2: damaged shards ------------------------------------------------------------------


def test_damaged_shards_are_found_before_training(bundled_shards: Path, tmp_path: Path):
    copy = copy_shards(bundled_shards, tmp_path / "tarred")
    size = (copy / "audio_2.tar").stat().st_size
    (copy / "audio_2.tar").write_bytes(random.Random(0).randbytes(size))
    with pytest.raises(data.BadShardsError, match=r"audio_2\.tar: not a tar archive") as err:
        data.open_tarred_dataset(str(copy), str(tmp_path / "local"))
    assert "1 of 4 shard(s) are damaged, --max-bad-shards allows 0" in str(err.value)

    dataset = data.open_tarred_dataset(str(copy), str(tmp_path / "local"), max_bad_shards=1)
    assert dataset.shard_ids == (0, 1, 3) and [b.shard_id for b in dataset.bad_shards] == [2]
    assert dataset.tarred_audio_filepaths == str(copy / "audio__OP_0,1,3_CL_.tar")
    assert dataset.manifest_filepath == str(copy / "sharded_manifests" / "manifest__OP_0,1,3_CL_.json")
    assert dataset.shard_hours([2]) > 0

    truncated = (copy / "audio_1.tar").read_bytes()
    (copy / "audio_1.tar").write_bytes(truncated[: len(truncated) // 2 // 512 * 512])  # whole blocks
    (copy / "audio_3.tar").write_bytes(truncated[:1000])
    with pytest.raises(data.BadShardsError) as err:
        data.open_tarred_dataset(str(copy), str(tmp_path / "local"), max_bad_shards=2)
    message = str(err.value)
    assert "3 of 4 shard(s) are damaged" in message
    assert "audio_1.tar: does not end with the two zero blocks" in message
    assert "audio_3.tar: 1000 bytes is not a whole number of 512-byte tar blocks" in message
    for i in range(4):
        (copy / f"audio_{i}.tar").write_bytes(b"")
    with pytest.raises(data.BadShardsError, match="all 4 shard"):
        data.open_tarred_dataset(str(copy), str(tmp_path / "local"), max_bad_shards=10)


def test_every_shard_damaged_fails_before_training_instead_of_hanging(
    bundled_shards: Path, bundled_eval_manifest: Path, tmp_path: Path
):
    copy = copy_shards(bundled_shards, tmp_path / "tarred")
    for i in range(4):
        size = (copy / f"audio_{i}.tar").stat().st_size
        (copy / f"audio_{i}.tar").write_bytes(random.Random(i).randbytes(size))
    try:
        result = run_asrflow(*train_args(copy, bundled_eval_manifest, tmp_path / "run"), timeout=150)
    except subprocess.TimeoutExpired:
        pytest.fail("training with every shard damaged hangs")
    assert result.returncode == 1, explain(result)
    assert "all 4 shard(s) are damaged" in result.stderr and "audio_3.tar: not a tar archive" in result.stderr


def test_shard_counts_against_metadata(bundled_shards: Path, tmp_path: Path):
    copy = copy_shards(bundled_shards, tmp_path / "tarred")
    lines = (copy / "sharded_manifests" / "manifest_0.json").read_text().splitlines(keepends=True)
    (copy / "sharded_manifests" / "manifest_0.json").write_text("".join(lines[:-1]))
    with pytest.raises(
        data.BadShardsError, match=rf"audio_0\.tar: its sharded manifest has {len(lines) - 1} line"
    ):
        data.open_tarred_dataset(str(copy), str(tmp_path / "local"))


def test_train_refuses_a_damaged_shard_naming_it_and_allows_it_when_asked(
    bundled_shards: Path, bundled_eval_manifest: Path, tmp_path: Path
):
    copy = copy_shards(bundled_shards, tmp_path / "tarred")
    size = (copy / "audio_2.tar").stat().st_size
    (copy / "audio_2.tar").write_bytes(random.Random(1).randbytes(size))
    refused = run_asrflow(*train_args(copy, bundled_eval_manifest, tmp_path / "run"))
    assert refused.returncode == 1, explain(refused)
    assert f"{copy / 'audio_2.tar'}: not a tar archive" in refused.stderr
    assert "--max-bad-shards" in refused.stderr and "Traceback" not in refused.stderr

    allowed = run_asrflow(
        *train_args(
            copy, bundled_eval_manifest, tmp_path / "run", "--max-bad-shards", "1", "trainer.max_steps=2"
        )
    )
    assert allowed.returncode == 0, explain(allowed)
    card = last_json_line(allowed.stdout)
    assert [(b["shard_id"], b["when"]) for b in card["bad_shards"]] == [(2, "before training")]
    assert card["bad_shard_hours"] > 0 and card["steps"] == 2


def test_a_shard_unreadable_during_training_is_fatal_unless_allowed(
    bundled_shards: Path, bundled_eval_manifest: Path, tmp_path: Path
):
    copy = copy_shards(bundled_shards, tmp_path / "tarred")
    for shard in (1, 3):
        inflate_member_size(copy / f"audio_{shard}.tar", 2)
    read_all = ["model.train_ds.bucket_buffer_size=400", "trainer.max_steps=2"]  # every shard before step 1
    failed = run_asrflow(*train_args(copy, bundled_eval_manifest, tmp_path / "run1", *read_all))
    assert failed.returncode == 1, explain(failed)
    assert "cannot be read (read error during training (ReadError: unexpected end of data))" in failed.stderr
    assert "--max-bad-shards allows 0" in failed.stderr
    assert any(f"shard {copy / f'audio_{i}.tar'} cannot be read" in failed.stderr for i in (1, 3))

    allowed = run_asrflow(
        *train_args(copy, bundled_eval_manifest, tmp_path / "run2", "--max-bad-shards", "2", *read_all)
    )
    assert allowed.returncode == 0, explain(allowed)
    card = last_json_line(allowed.stdout)
    assert [(b["shard_id"], b["when"]) for b in card["bad_shards"]] == [
        (1, "during training"),
        (3, "during training"),
    ]
    assert card["bad_shard_hours"] > 0


def test_all_shards_unreadable_during_training_fails_at_once(
    bundled_shards: Path, bundled_eval_manifest: Path, tmp_path: Path
):
    copy = copy_shards(bundled_shards, tmp_path / "tarred")
    for shard in range(4):
        inflate_member_size(copy / f"audio_{shard}.tar", 1)
    try:  # the reader used to skip from shard to shard forever, with no step
        result = run_asrflow(*train_args(copy, bundled_eval_manifest, tmp_path / "run"), timeout=150)
    except subprocess.TimeoutExpired:
        pytest.fail("training with every shard damaged hangs")
    assert result.returncode == 1, explain(result)
    assert "cannot be read (read error during training" in result.stderr
    allowed = run_asrflow(
        *train_args(copy, bundled_eval_manifest, tmp_path / "run", "--max-bad-shards", "10"), timeout=150
    )
    assert allowed.returncode == 1, explain(allowed)
    assert "every shard in use failed to read during training" in allowed.stderr


SKIP_WARNING = "Skipping tar file due to read errors (unstable storage or bad file?): "


def test_shard_health_hooks_nemos_skip_warning(bundled_shards: Path, tmp_path: Path):
    """The hook on NeMo's own logger call, as nemo_adapters.py makes it inside its except."""
    from nemo.utils import logging as nemo_logging

    dataset = data.open_tarred_dataset(str(bundled_shards), str(tmp_path / "local"))
    health = data.ShardHealth(dataset, 1, tmp_path / "skips.jsonl").install()
    try:
        for shard in (1, 2):
            tar_path = dataset.tar_paths[shard]
            try:
                raise tarfile.ReadError("unexpected end of data")
            except tarfile.ReadError:
                if shard == 1:
                    nemo_logging.warning(SKIP_WARNING + f"{tar_path=}")
                    nemo_logging.warning(f"Skipped corrupted file 'x.flac' in {tar_path=}.")
                else:
                    with pytest.raises(
                        data.BadShardsError, match=r"2 damaged shard\(s\), --max-bad-shards allows 1"
                    ):
                        nemo_logging.warning(SKIP_WARNING + f"{tar_path=}")
        summary = health.summary()
        assert [b["shard_id"] for b in summary["bad_shards"]] == [1, 2]
        assert summary["skipped_utterances"] == 1 and summary["bad_shard_hours"] > 0
        assert "audio_2.tar cannot be read" in (health.fatal() or "")
    finally:
        health.close()
    assert not (tmp_path / "skips.jsonl").exists()


# --- item 2: SIGTERM and stalls while data loading hangs --------------------------------------

SPOT_POD_GRACE_S = 15.0


def test_sigterm_while_data_loading_hangs_exits_143_within_seconds(hung_gcs_training, tmp_path: Path):
    argv, env, pids = hung_gcs_training
    log_path = tmp_path / "train.log"
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log_file, env=env)
    try:
        started = wait_for(log_path, "training from step 0 to", process, RUN_TIMEOUT_S)
        assert started, log_path.read_text()[-4000:]
        deadline = time.monotonic() + 30
        while not (pids.exists() and pids.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.1)  # the shard reader has started, and hangs
        assert pids.exists(), log_path.read_text()[-4000:]
        time.sleep(1.0)
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running 30 s after SIGTERM\n{log_path.read_text()[-4000:]}")
        elapsed = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = log_path.read_text()
    print(f"SIGTERM while the shard read hangs: exit {code} after {elapsed:.1f}s")
    assert code == 143, f"exit {code}\n{text[-4000:]}"
    # the mechanism is the message below; the bound is the platform's: GKE's graceful node
    # shutdown of a spot VM gives non-system pods 15 s (the time on a loaded machine varies)
    assert elapsed < SPOT_POD_GRACE_S, f"{elapsed:.1f}s from SIGTERM to exit\n{text[-4000:]}"
    assert "stopped by SIGTERM at step 0 of 12 (no step ended within 3s: waiting for data)" in text
    # the hung reader notices that its parent is gone and ends too
    reader = int(pids.read_text().split()[0])
    deadline = time.monotonic() + 10
    while pid_alive(reader) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(reader), "the pipe: reader outlived the training process"


def test_no_progress_for_the_stall_timeout_is_an_error(hung_gcs_training):
    argv, env, _ = hung_gcs_training
    started = time.monotonic()
    result = subprocess.run(
        [*argv, "--stall-timeout", "0.1"],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        env=env,
        check=False,
    )
    assert result.returncode == 1, explain(result)
    assert (
        "no training progress for 00:06 (--stall-timeout 0.1) after step 0, waiting for training data"
        in result.stderr
    )
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < RUN_TIMEOUT_S


# --- item 5 (checkpoints): checksums and weights_only ------------------------------------------


class _FakeTrainer:
    """What CheckpointStore.save needs from a Lightning trainer, writing plain checkpoints."""

    is_global_zero = True

    def __init__(self, payload: dict) -> None:
        self.payload = payload

    def save_checkpoint(self, path: str) -> None:
        import torch

        torch.save(self.payload, path)


def _plain_checkpoint(step: int) -> dict:
    import torch

    return {
        "global_step": step,
        "state_dict": {"w": torch.full((4,), float(step))},
        "optimizer_states": [],
        "lr_schedulers": [],
        "loops": {},
    }


def test_a_checkpoint_changed_after_writing_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    import torch

    store = checkpoints.CheckpointStore(str(tmp_path / "checkpoints"), tmp_path / "scratch")
    for step in (4, 8):
        store.save(_FakeTrainer(_plain_checkpoint(step)), step)
    assert store.newest_readable().step == 8

    newest = tmp_path / "checkpoints" / "step-00000008" / "model.ckpt"
    changed = _plain_checkpoint(8)
    changed["state_dict"]["w"] = torch.full((4,), 1e6)  # still a valid checkpoint, other weights
    torch.save(changed, newest)
    with caplog.at_level("WARNING", logger="asrflow.train"):
        resume = store.newest_readable()
    assert resume is not None and resume.step == 4
    assert "step-00000008/model.ckpt is refused: its bytes changed after it was written" in caplog.text
    assert (
        store.recorded_sha256(4)
        == resume.sha256
        == hashlib.sha256(Path(resume.local_path).read_bytes()).hexdigest()
    )


def test_a_checkpoint_that_would_run_code_is_never_unpickled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    import torch

    marker = tmp_path / "executed"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    store = checkpoints.CheckpointStore(str(tmp_path / "checkpoints"), tmp_path / "scratch")
    payload = {**_plain_checkpoint(4), "extra": Evil()}
    path = tmp_path / "checkpoints" / "step-00000004" / "model.ckpt"
    path.parent.mkdir(parents=True)
    torch.save(payload, path)
    # whoever can write the run directory can write a matching marker too
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    storage.mark_complete(str(path.parent), f"step 4\nsha256 {digest}\n")
    with caplog.at_level("WARNING", logger="asrflow.train"):
        try:
            resumed = store.newest_readable()
        except checkpoints.CheckpointError as err:
            resumed = err
    assert not marker.exists(), "unpickling the checkpoint ran code"
    assert isinstance(resumed, checkpoints.CheckpointError) and "none can be read" in str(resumed)
    assert "is refused" in caplog.text and "posix.system" in caplog.text
    # Lightning's resume goes through the same safe load
    with pytest.raises(checkpoints.UntrustedCheckpoint, match="not loaded"):
        checkpoints.safe_checkpoint_io().load_checkpoint(str(path))
    assert not marker.exists()


def test_the_trainer_loads_checkpoints_safely(tmp_path: Path):
    from components.train.config import load_config
    from components.train.hardware import make_trainer, resolve_hardware

    trainer = make_trainer(load_config("tiny"), resolve_hardware(), [], False, tmp_path)
    assert type(trainer.strategy.checkpoint_io).__name__ == "SafeCheckpointIO"
