"""``make bench-quality``: train the small CPU config for 500 steps on ~1 hour of speech.

Generates a corpus of about one hour of synthetic espeak-ng/flite speech (plus 60 validation
and 60 held-out test sentences), writes it as NeMo tarred shards, estimates bucket bins,
trains ``components/train/conf/small.yaml`` with ``asrflow train`` and prints WER/CER on
the 60 held-out test sentences before training (the fresh model) and after. Not in CI: it
takes about 1 h 50 min on two CPU cores (21.5% WER / 5.8% CER on 2026-11-22). Figures, never asserts.

    python -m tests.bench_quality [--workdir DIR] [--hours 1.0] [--steps 500] [--config small|FILE.yaml]
                                  [--ctc-steps N] [--freeze-encoder [--train-last-layers N]]
                                  [KEY=VALUE ...]

With ``--ctc-steps N`` the first N of the steps train small_ctc_bpe, whose encoder then starts
the config's model for the rest (``asrflow.init_encoder_from``), frozen with ``--freeze-encoder``:
how small_rnnt_bpe learns.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from components.progress import format_seconds, setup_logging

log = logging.getLogger("asrflow.bench_quality")

DEFAULT_CONFIG = "small"
SEED = 0
SUBWORD_VOCAB_SIZE = 128  # what the small sub-word configs' headers train
CTC_ENCODER_CONFIG = "small_ctc_bpe"  # --ctc-steps: the encoder's first stage


def make_data(
    workdir: Path,
    hours: float | None,
    train_ds: Any,
    voices: str = "mixed",
    seed: int = SEED,
    train_utterances: int = 0,
) -> tuple[Path, Path, Path]:
    """Corpus -> tarred shards with bins, validation and test manifests (each step once).

    The bins are estimated for the config's ``train_ds`` (its num_buckets and batch_duration);
    ``voices`` and ``seed`` choose the corpus (tests.corpus.generate.VOICE_SETS); the train
    split is ``hours`` of audio, or ``train_utterances`` utterances when ``hours`` is None.
    """
    from components import storage
    from components.buckets.core import estimate_buckets
    from components.export import export_manifest
    from components.shard.core import write_shards
    from tests.corpus.generate import generate_corpus

    corpus = workdir / "corpus"
    if not (corpus / "SHA256SUMS").exists():
        started = time.monotonic()
        summary = generate_corpus(
            corpus,
            train=train_utterances,
            dev=60,
            test=60,
            seed=seed,
            hours=hours,
            train_files=4,
            voices=voices,
        )
        train_hours = summary["splits"]["train"]["hours"]
        log.info("corpus of %.2f h generated in %s", train_hours, format_seconds(time.monotonic() - started))
    tarred = workdir / "tarred"
    if not storage.is_complete(str(tarred)):
        write_shards(str(corpus / "clean"), str(tarred), num_shards=8, seed=seed, workers=2)
    estimate_buckets(
        str(tarred), num_buckets=int(train_ds.num_buckets), batch_duration=float(train_ds.batch_duration)
    )
    validation = Path(export_manifest(str(corpus / "validation"), str(workdir / "validation")))
    test = Path(export_manifest(str(corpus / "test"), str(workdir / "test")))
    return tarred, validation, test


def subword_tokenizer(tarred: Path, workdir: Path, config: str) -> str:
    """For a sub-word config, the tokenizer of the training text (the DAG's train-tokenizer
    step, cached under WORKDIR/tokenizers); "" for a character config."""
    from components.train.tokenizer import tokenizer_for_config

    tokenizer, _ = tokenizer_for_config(str(tarred), str(workdir), config, vocab_size=SUBWORD_VOCAB_SIZE)
    return tokenizer


def score(model_path: Path, test: Path, out: Path) -> dict[str, Any]:
    """WER and CER of a model on the test manifest, by the evaluate step's core."""
    from components.evaluate.core import evaluate

    card = evaluate(str(model_path), [f"test={test}"], str(out), device="cpu", echo=False)
    return card["sets"]["test"]


def each_decoding(figures: dict[str, Any]) -> str:
    """A hybrid model's figures per head (its evaluate card's decodings); "" for one head."""
    decodings = figures.get("decodings") or {}
    if len(decodings) < 2:
        return ""
    return "  by head: " + ", ".join(
        f"{name} WER {d['wer']:.1%} CER {d['cer']:.1%}" for name, d in sorted(decodings.items())
    )


def untrained_model(path: Path, config: str, overrides: list[str]) -> Path:
    """The fresh model the training run starts from (same config and seed)."""
    if not path.exists():
        import lightning.pytorch as pl

        from components.train.config import load_config
        from components.train.model import build_model

        cfg = load_config(config, overrides)
        pl.seed_everything(int(cfg.asrflow.seed), verbose=False)
        build_model(cfg).save_to(str(path))
    return path


def train(
    tarred: Path,
    validation: Path,
    run_dir: Path,
    config: str,
    steps: int,
    overrides: list[str],
    **more_settings: Any,
) -> dict[str, Any]:
    """``asrflow train`` as a user runs it; its log goes to RUN_DIR.log and to our stderr.

    ``more_settings``: other fields of TrainSettings (e.g. ``init_from``).
    """
    from components.train.settings import TrainSettings

    settings = TrainSettings(
        tarred_dir=str(tarred),
        val_manifest=str(validation),
        run_dir=str(run_dir),
        config=config,
        max_steps=steps,
        overrides=overrides,
        **more_settings,
    )
    command = [str(Path(sys.executable).with_name("asrflow")), "train", *settings.to_argv()]
    log.info("running: %s", " ".join(command))
    with open(run_dir.with_suffix(".log"), "a") as log_file:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            for line in process.stderr:  # the log; the card comes on stdout
                log_file.write(line)
                log_file.flush()
                if "asrflow.train" in line:
                    sys.stderr.write(line)
            stdout = process.stdout.read()
        finally:
            if process.poll() is None:  # we were stopped: stop the training run too
                process.terminate()
        if process.wait() != 0:
            raise SystemExit(f"asrflow train failed with exit code {process.returncode}; see {log_file.name}")
    last = stdout.strip().splitlines()[-1]
    return json.loads(last)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="make bench-quality", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, help="keep data and runs here (default: a temp dir)")
    parser.add_argument("--hours", type=float, default=1.0, help="hours of training speech (default 1)")
    parser.add_argument("--steps", type=int, default=500, help="training steps (default 500)")
    parser.add_argument(
        "--config", default=DEFAULT_CONFIG, help="a shipped config name or a YAML file (default: small)"
    )
    parser.add_argument(
        "--ctc-steps",
        type=int,
        default=0,
        help=f"train {CTC_ENCODER_CONFIG} for the first N of --steps and start the config's encoder "
        "from it (a transducer's recipe: small_rnnt_bpe.yaml); default 0, the config alone",
    )
    parser.add_argument(
        "--freeze-encoder",
        action="store_true",
        help="train the config's model with its encoder as it starts (asrflow train --freeze-encoder)",
    )
    parser.add_argument(
        "--train-last-layers",
        type=int,
        default=0,
        metavar="N",
        help="with --freeze-encoder: the last N encoder layers still train (asrflow train's flag)",
    )
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE overrides of the config")
    args = parser.parse_args(argv)
    if not 0 <= args.ctc_steps < args.steps:
        parser.error(f"--ctc-steps must be at least 0 and less than --steps ({args.steps})")
    from components.train.errors import TrainError
    from components.train.settings import check_freezing

    try:  # before the CTC stage, not after it
        check_freezing(args.freeze_encoder, args.train_last_layers)
    except TrainError as err:
        parser.error(str(err))
    setup_logging()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))  # run the cleanups
    from components.train.config import load_config

    train_ds = load_config(args.config, args.overrides).model.train_ds
    with tempfile.TemporaryDirectory(prefix="asrflow-bench-quality-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        tarred, validation, test = make_data(workdir, args.hours, train_ds)
        tokenizer = subword_tokenizer(tarred, workdir, args.config)
        with_tokenizer = [f"model.tokenizer.dir={tokenizer}"] if tokenizer else []
        fresh_model = untrained_model(
            workdir / "untrained.nemo", args.config, args.overrides + with_tokenizer
        )
        before = score(fresh_model, test, workdir / "eval-before")
        started = time.monotonic()
        overrides, ctc_stage = list(args.overrides), ""
        if args.ctc_steps:
            ctc_card = train(
                tarred,
                validation,
                workdir / "ctc-run",
                CTC_ENCODER_CONFIG,
                args.ctc_steps,
                [],
                tokenizer_dir=tokenizer or None,
            )
            ctc_after = score(Path(ctc_card["model"]), test, workdir / "eval-ctc")
            overrides.append(f"asrflow.init_encoder_from={ctc_card['model']}")
            ctc_stage = (
                f"  first {args.ctc_steps} steps: {CTC_ENCODER_CONFIG}, WER {ctc_after['wer']:.1%} "
                f"CER {ctc_after['cer']:.1%} after them; its encoder starts the {args.config} model"
            )
        card = train(
            tarred,
            validation,
            workdir / "run",
            args.config,
            args.steps - args.ctc_steps,
            overrides,
            tokenizer_dir=tokenizer or None,
            freeze_encoder=args.freeze_encoder,
            train_last_layers=args.train_last_layers,
        )
        wall = time.monotonic() - started
        after = score(Path(card["model"]), test, workdir / "eval-after")
        corpus_hours = card.get("dataset_hours") or args.hours
        print(
            f"bench-quality: config {args.config} ({card['parameters'] / 1e6:.1f}M parameters), "
            f"{card['steps']} steps, {card['hours_seen']:.2f} audio hours seen ({corpus_hours:.2f} h data), "
            f"train {format_seconds(wall)} wall, {card['throughput_audio_s_per_s']:.1f} audio-s/s"
        )
        if ctc_stage:
            print(ctc_stage)
        print(
            f"  60 held-out sentences  before: WER {before['wer']:.1%}  CER {before['cer']:.1%}"
            f"{each_decoding(before)}"
        )
        print(
            f"                         after:  WER {after['wer']:.1%}  CER {after['cer']:.1%}  "
            f"(val_wer during training {card['val_wer']:.1%}; targets: WER <= 25%, CER <= 8%)"
            f"{each_decoding(after)}"
        )


if __name__ == "__main__":
    main()
