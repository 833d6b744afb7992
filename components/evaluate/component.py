"""The ``evaluate`` KFP component: a thin wrapper over :mod:`components.evaluate.core`."""

from kfp import dsl

from components.images import TRAIN_IMAGE


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def evaluate(
    model_uri: str,
    eval_sets: list,
    out_dir: str,
    card: dsl.Output[dsl.Artifact],
    metrics: dsl.Output[dsl.Metrics],
    champion_uri: str = "",
    batch_size: int = 16,
    min_improvement: float = 0.0,
) -> bool:
    """Transcribe eval sets with a NeMo model; score WER/CER; promote it if it beats the champion.

    Args:
        model_uri: the .nemo model to evaluate (local path or gs:// URI under the data root).
        eval_sets: NeMo manifests, parquet directories or download cards, each ``PATH`` or
            ``NAME=PATH``.
        out_dir: where hypotheses.jsonl per set, report.md and card.json go.
        card: the step's card (per-set WER, CER, S/I/D counts, hours; the champion decision).
        metrics: WER and CER per set, and the mean WER, for the KFP UI.
        champion_uri: champion.json of the model in service; empty for no comparison.
        batch_size: utterances per forward pass on the GPU.
        min_improvement: mean-WER gain (absolute) needed to replace the champion.

    Returns:
        True when this model became the champion.
    """
    import json

    from components.evaluate import core

    result = core.evaluate(
        model_uri,
        list(eval_sets),
        out_dir,
        champion_uri=champion_uri or None,
        batch_size=batch_size,
        min_improvement=min_improvement,
    )
    with open(card.path, "w", encoding="utf-8") as out:
        json.dump(result, out, sort_keys=True, indent=2)
    card.metadata["uri"] = out_dir
    for name, figures in result["sets"].items():
        metrics.log_metric(f"{name}_wer", figures["wer"])
        metrics.log_metric(f"{name}_cer", figures["cer"])
    metrics.log_metric("mean_wer", result["mean_wer"])
    return bool(result["champion"] and result["champion"]["promoted"])
