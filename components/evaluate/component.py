"""The ``evaluate`` KFP component: a thin wrapper over :mod:`components.evaluate.core`."""

from kfp import dsl

from components.images import TRAIN_IMAGE


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def evaluate(
    model_uri: str,
    eval_sets: list,
    data_root: str,
    run_id: str,
    card: dsl.Output[dsl.Artifact],
    metrics: dsl.Output[dsl.Metrics],
    report: dsl.Output[dsl.Markdown],
    champion_uri: str = "",
    champion_name: str = "",
    batch_size: int = 16,
    min_improvement: float = 0.0,
    max_wer: float = 0.9,
    validation_set: str = "",
):
    """Transcribe eval sets with a NeMo model, score WER/CER, promote it if it beats the champion.

    Args:
        model_uri: the .nemo model to evaluate (gs:// URI or local path).
        eval_sets: the eval sets, each a NeMo manifest URI, ``NAME=URI``, or an object with
            ``name`` and ``manifest``.
        data_root: the data root; outputs go to ``runs/<run_id>/eval`` under it.
        run_id: the run whose model this is.
        card: the step's card: per-set WER, CER, S/I/D counts and hours; the champion decision.
        metrics: WER and CER per set and the mean WER, for the KFP UI.
        report: the Markdown report: WER/CER per set, the champion decision, the worst
            utterances.
        champion_uri: champion.json of the model in service; the new model replaces it only when better.
        champion_name: instead of champion_uri: ``models/<champion_name>/champion.json`` under data_root.
        batch_size: utterances per forward pass.
        min_improvement: mean-WER gain (absolute, 0.005 = half a point) needed to replace the champion.
        max_wer: promotion ceiling: a model whose mean WER is above it is never promoted, even
            when there is no champion yet.
        validation_set: the set training validated on (``NAME=MANIFEST``), scored first; an
            eval set of the same name is not scored twice.
    """
    import json

    from components import layout, storage
    from components.evaluate import core
    from components.evaluate.card import EvaluateCard
    from components.evaluate.sets import eval_set_specs

    out_dir = layout.run_eval_dir(data_root, run_id)
    result = core.evaluate(
        model_uri,
        eval_set_specs(([validation_set] if validation_set else []) + list(eval_sets)),
        out_dir,
        champion_uri=champion_uri
        or (layout.champion_uri(data_root, champion_name) if champion_name else None),
        batch_size=batch_size,
        min_improvement=min_improvement,
        max_wer=max_wer,
    )
    with open(card.path, "w", encoding="utf-8") as out:
        json.dump(result, out, sort_keys=True, indent=2)
    found = EvaluateCard.from_dict(result)
    card.metadata.update(
        uri=found.out_dir,
        mean_wer=found.mean_wer,
        promoted=bool(found.champion and found.champion["promoted"]),
    )
    for name, figures in found.sets.items():
        metrics.log_metric(f"{name}_wer", figures["wer"])
        metrics.log_metric(f"{name}_cer", figures["cer"])
    metrics.log_metric("mean_wer", found.mean_wer)
    with open(report.path, "w", encoding="utf-8") as out:
        out.write(storage.read_text(found.report))
