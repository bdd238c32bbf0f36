"""The pipeline's steps as plain functions on a config and paths.

Each KFP component in ``components/`` is a thin wrapper over one of these, and the CLI and
tests call them directly, so the same code runs in tests, in ``kfp.local`` and in containers.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from garbage.core.config import Config
from garbage.training.data.fetch import fetch_dataset
from garbage.training.data.split import read_manifest, split_dataset, split_summary, write_manifest
from garbage.training.data.validate import raise_for_errors, validate_dataset, write_report
from garbage.training.data.versions import (
    apply_version_splits,
    materialize_version,
    open_store,
    read_info,
    version_manifest,
)

if TYPE_CHECKING:  # sklearn loads with the metrics, torch with training: only where used
    from garbage.training.metrics import Scored
    from garbage.training.train import EpochCallback

TABLE_FILENAME = "images.csv"


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"epochs": 3}}`` -> ``{"train.epochs": 3}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def fetch_step(config: Config, out_dir: Path) -> dict[str, Any]:
    """Publish the images as class folders in ``out_dir``.

    With ``data.version`` set: the dataset version's images (checked against their hashes),
    ``out_dir/<label>/<sha256>.<ext>``. Else: fetch and extract the archive of ``data.source``
    (cached) and copy its class folders.

    Returns:
        ``source``, ``sha256`` (the archive's, or the version's full digest), ``files``, and
        with a version its name as ``version``.
    """
    if config.data.version is not None:
        store = open_store(config)
        files = materialize_version(store, config.data.version, out_dir)
        return {
            "version": config.data.version,
            "source": store.version_url(config.data.version),
            "sha256": read_info(store, config.data.version)["digest"],
            "files": files,
        }
    root = fetch_dataset(config.data.source, config.data.sha256, config.data_cache_dir)
    if out_dir.resolve() != root.resolve():
        shutil.copytree(root, out_dir, dirs_exist_ok=True)
    files = sum(1 for p in out_dir.rglob("*") if p.is_file())
    return {"source": config.data.source, "sha256": config.data.sha256, "files": files}


def validate_step(config: Config, images_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Validate the images, write the reports and the kept-image table; raise on hard errors."""
    report, kept = validate_dataset(images_dir, config.data)
    write_report(report, out_dir)
    kept.to_csv(out_dir / TABLE_FILENAME, index=False)
    raise_for_errors(report)
    return json.loads(report.to_json())


def split_step(config: Config, table_csv: Path, manifest_csv: Path) -> dict[str, Any]:
    """Split the kept images into train/val/test and write the manifest CSV.

    With ``data.version`` set, the splits are the version's, not split again (its ``source`` and
    ``time`` columns come along, so the model card and the gate see each source's slice; the
    version keeps every image: ``split.max_per_class`` does not apply). Else a stratified,
    seeded split by :func:`garbage.training.data.split.split_dataset`.

    Raises:
        garbage.training.data.versions.DatasetVersionError: The kept images are not exactly
            the version's (validation under other ``data`` settings left some out).
    """
    table = pd.read_csv(table_csv, dtype={"sha256": str})
    if config.data.version is not None:
        version = version_manifest(open_store(config), config.data.version)
        manifest = apply_version_splits(table, version, config.data.version)
    else:
        manifest = split_dataset(table, config.split)
    write_manifest(manifest, manifest_csv)
    return split_summary(manifest)


def manifest_items(manifest: pd.DataFrame, split: str, classes: list[str]) -> list[tuple[str, int]]:
    """``(path, class index)`` pairs of one split."""
    index = {c: i for i, c in enumerate(classes)}
    rows = manifest[manifest["split"] == split]
    return [(p, index[label]) for p, label in zip(rows["path"], rows["label"], strict=True)]


def manifest_sources(manifest: pd.DataFrame, split: str) -> list[str] | None:
    """The ``source`` of each image of one split, in :func:`manifest_items` order.

    None when the manifest has no ``source`` column (one source).
    """
    if "source" not in manifest.columns:
        return None
    return [str(s) for s in manifest.loc[manifest["split"] == split, "source"]]


def train_step(
    config: Config,
    images_dir: Path,
    manifest_csv: Path,
    out_dir: Path,
    run_name: str | None = None,
    *,
    on_epoch: EpochCallback | None = None,
    tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Train with MLflow tracking; write ``best.pt`` and ``history.json`` into ``out_dir``.

    The one tracked training of the project: the pipeline's train step, ``garbage train`` and
    every trial of ``garbage tune`` (a run nested in the study's when a run is active).

    The run carries its lineage (:mod:`garbage.training.lineage`): the git commit
    (``mlflow.source.git.commit``) and ``git.dirty``, the data version (``data.version``,
    ``data.sha256``, ``data.manifest_digest``), the resolved config, and each split of the
    manifest as an MLflow dataset input. Its name says what it is (``run_name``, default e.g.
    ``train efficientnet_lite0 112x112 data:3f2a11bc git:5601964``).

    Args:
        config: The validated config.
        images_dir: The folder the manifest's paths are relative to.
        manifest_csv: The split manifest.
        out_dir: Where ``best.pt``, ``history.json`` and ``train_summary.json`` go.
        run_name: The MLflow run's name (default: what it is, see above).
        on_epoch: Called after each epoch's metrics are logged; returning True stops training.
        tags: More tags of the run.

    Returns:
        ``run_id``, ``best_epoch``, ``best_val_macro_f1``, ``device``, ``train_images_per_second``,
        ``train_seconds``, ``stopped_early`` and ``checkpoint``.
    """
    import mlflow

    from garbage.training.lineage import (
        code_version,
        data_version,
        lineage_tags,
        log_dataset_inputs,
    )
    from garbage.training.lineage import run_name as describe_run
    from garbage.training.registry import CHECKPOINT_ARTIFACT, checkpoint_of, configure_tracking
    from garbage.training.train import train_model

    manifest = read_manifest(manifest_csv)
    code, data = code_version(), data_version(config, manifest)
    experiment_id = configure_tracking(config)
    name = run_name or describe_run("train", config, data, code)
    nested = mlflow.active_run() is not None

    def log_epoch(epoch: int, metrics: dict[str, float]) -> bool | None:
        mlflow.log_metrics(metrics, step=epoch)
        return on_epoch(epoch, metrics) if on_epoch is not None else None

    with mlflow.start_run(experiment_id=experiment_id, run_name=name, nested=nested) as run:
        mlflow.log_params(flatten(config.model_dump(mode="json", exclude={"tune"})))
        mlflow.log_dict(config.model_dump(mode="json"), "config/resolved_config.json")
        mlflow.log_dict(split_summary(manifest), "data/split_summary.json")
        mlflow.log_artifact(str(manifest_csv), "data")
        mlflow.set_tags(
            {**lineage_tags(code, data), "data.source": config.data.source, **(tags or {})}
        )
        log_dataset_inputs(manifest, data)
        with tempfile.TemporaryDirectory(prefix="garbage-init-") as downloads:
            init = None
            if config.train.init_from is not None:
                init = checkpoint_of(config, config.train.init_from, Path(downloads))
                mlflow.set_tag("train.init_from", config.train.init_from)
            result = train_model(
                config,
                images_dir,
                manifest_items(manifest, "train", config.data.classes),
                manifest_items(manifest, "val", config.data.classes),
                out_dir,
                on_epoch=log_epoch,
                init_checkpoint=init,
                train_sources=manifest_sources(manifest, "train"),
            )
        mlflow.log_artifact(str(result.checkpoint), str(Path(CHECKPOINT_ARTIFACT).parent))
        summary = {
            "run_id": run.info.run_id,
            "best_epoch": result.best_epoch,
            "best_val_macro_f1": result.best_val_macro_f1,
            "device": result.device,
            "train_images_per_second": result.train_images_per_second,
            "train_seconds": result.seconds,
            "stopped_early": result.stopped_early,
            "checkpoint": str(result.checkpoint),
        }
        mlflow.log_metrics(
            {
                "best_val_macro_f1": result.best_val_macro_f1,
                "train_images_per_second_avg": result.train_images_per_second,
            }
        )
        mlflow.set_tag("device", result.device)
        (out_dir / "history.json").write_text(json.dumps(result.history, indent=2))
        (out_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def evaluate_step(
    config: Config,
    checkpoint: Path,
    images_dir: Path,
    manifest_csv: Path,
    out_dir: Path,
    run_id: str,
) -> dict[str, Any]:
    """Evaluate the checkpoint on the test split and log the metrics and plots to the run."""
    import mlflow

    from garbage.training.evaluate import evaluate_checkpoint
    from garbage.training.registry import configure_tracking

    metrics = evaluate_checkpoint(checkpoint, images_dir, read_manifest(manifest_csv), out_dir)
    configure_tracking(config)
    with mlflow.start_run(run_id=run_id):
        flat = {"test_accuracy": metrics["accuracy"], "test_macro_f1": metrics["macro_f1"]}
        for name, values in metrics["per_class"].items():
            flat[f"test_recall_{name}"] = values["recall"]
            flat[f"test_f1_{name}"] = values["f1"]
        mlflow.log_metrics(flat)
        mlflow.log_artifacts(str(out_dir), "evaluation")
    return metrics


def export_step(
    config: Config,
    checkpoint: Path,
    images_dir: Path,
    manifest_csv: Path,
    out_dir: Path,
    run_id: str,
) -> dict[str, Any]:
    """Export to ONNX, checking parity on random and real test images."""
    import mlflow

    from garbage.core.preprocessing import decode_image, to_model_input
    from garbage.training.export import export_onnx
    from garbage.training.registry import configure_tracking

    manifest = read_manifest(manifest_csv)
    sample = manifest[manifest["split"] == "test"]["path"].head(16)
    h, w = config.model.image_height, config.model.image_width
    parity = [to_model_input(decode_image((images_dir / p).read_bytes()), h, w) for p in sample]
    metadata = export_onnx(
        checkpoint, out_dir, parity, {"mlflow_run_id": run_id, "data_sha256": config.data.sha256}
    )
    configure_tracking(config)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metric("onnx_parity_max_abs_diff", metadata["parity_max_abs_diff"])
    return metadata


def predict_on_split(
    classifier: Any,
    images_dir: Path,
    manifest: pd.DataFrame,
    split: str = "test",
    slice_name: str = "dataset",
) -> Scored:
    """One scoring pass of an ONNX classifier on one split of the manifest.

    Args:
        classifier: An :class:`garbage.core.classifier.OnnxClassifier`.
        images_dir: The folder the manifest's paths are relative to.
        manifest: The split manifest.
        split: Which split to score.
        slice_name: The data slice of every image when the manifest has no ``source`` column.

    Returns:
        True and predicted classes, top probabilities and each image's slice (its ``source``).

    Raises:
        ValueError: The split holds classes the model does not know.
    """
    from garbage.training.metrics import Scored

    rows = manifest[manifest["split"] == split]
    index = {c: i for i, c in enumerate(classifier.classes)}
    unknown = set(rows["label"]) - set(index)
    if unknown:
        raise ValueError(f"the model does not know the classes {sorted(unknown)}")
    predictions = classifier.predict_bytes([(images_dir / p).read_bytes() for p in rows["path"]])
    groups = (
        [str(s) for s in rows["source"]] if "source" in rows.columns else [slice_name] * len(rows)
    )
    return Scored(
        classes=list(classifier.classes),
        y_true=[index[label] for label in rows["label"]],
        y_pred=[index[p.label] for p in predictions],
        confidence=[p.score for p in predictions],
        groups=groups,
    )


def register_step(
    config: Config,
    export_dir: Path,
    images_dir: Path,
    manifest_csv: Path,
    out_dir: Path,
    run_id: str,
    reference: Path | None = None,
    rollout_follows: bool = False,
) -> dict[str, Any]:
    """Register the exported model with its card; a candidate that passes the gate is promoted.

    The candidate and the current champion are scored by the same ONNX evaluator on this run's
    test set, so the comparison is fair even when the champion was trained on other data. The
    gate (:func:`garbage.training.registry.decide_promotion`) looks at the whole test set and at
    each data slice of it (each ``source`` of the manifest): the candidate must beat the
    champion overall (``registry.overall``: by default the mean of the slices' scores) by
    ``registry.min_improvement`` and no slice of at least
    ``registry.min_slice_images`` images may get worse by more than ``registry.slice_tolerance``.
    The decision's row per slice is in ``decision.md``, the run's ``gate/decision.json`` (and
    the candidate's ``gate_slice_<slice>_<metric>`` metrics), the version's
    ``gate.slice.<slice>`` tags and the model card's "Promotion gate" section.
    ``reference`` (the monitoring reference profile, a file or a folder) is stored with the model
    version.
    Promoted means: the champion alias moves to the new version at once, or, with
    ``rollout_follows`` (a deploy step comes next), the challenger alias marks it and the champion
    alias moves only once the InferenceService serves it (``garbage.release``).

    The version links to ``run_id`` and carries its lineage as tags (``git.commit``,
    ``git.dirty``, ``data.version``, ``data.sha256``). Its model card
    (:func:`garbage.training.model_card.build_model_card`, from the candidate's one scoring pass
    on the test split and the external sets of ``card.external``) is the version's description,
    the run's ``model_card.md`` and ``out_dir/model_card.md``.
    Writes ``decision.json``, ``decision.md`` and ``model_card.md`` into ``out_dir``.
    """
    import mlflow

    from garbage.core.classifier import (
        METADATA_FILENAME,
        ModelIntegrityError,
        ModelMetadata,
        OnnxClassifier,
    )
    from garbage.core.model_uri import champion_uri, resolve_model_dir
    from garbage.training.lineage import CodeVersion, code_version, data_version, version_tags
    from garbage.training.model_card import (
        CARD_FILENAME,
        build_model_card,
        fit_description,
        measure_external,
    )
    from garbage.training.registry import (
        MAX_DESCRIPTION,
        champion_version,
        configure_tracking,
        decide_promotion,
        describe_version,
        gate_table,
        log_onnx_model,
        record_decision,
        register_model,
        set_challenger,
        set_champion,
        slice_key,
        slice_scores,
        slice_tags,
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    configure_tracking(config)
    manifest = read_manifest(manifest_csv)
    data = data_version(config, manifest)
    metric = config.registry.gate_metric
    exported = OnnxClassifier.load(export_dir, device="cpu")
    scored = predict_on_split(exported, images_dir, manifest, slice_name=data.name)
    candidate = scored.metrics()
    # Before anything is registered: a configured set that cannot be fetched stops the step.
    external = [measure_external(exported, s, config.data_cache_dir) for s in config.card.external]
    previous = champion_version(config)
    champion_score = None
    champion_scored: Scored | None = None
    note = ""
    if previous is not None:
        try:
            champion = OnnxClassifier.load(
                resolve_model_dir(champion_uri(config), config), device="cpu"
            )
        except ModelIntegrityError as e:
            champion = None
            note = f" (champion v{previous} fails verification, not comparable: {e})"
        if champion is not None and champion.classes == config.data.classes:
            champion_scored = predict_on_split(champion, images_dir, manifest, slice_name=data.name)
            champion_score = champion_scored.metrics()[metric]
        elif champion is not None:
            note = (
                f" (champion v{previous} predicts other classes {champion.classes}; not comparable)"
            )
    decision = decide_promotion(
        metric,
        candidate[metric],
        champion_score,
        config.registry.min_improvement,
        config.registry.min_metric,
        previous,
        slices=slice_scores(
            metric,
            scored.slices(),
            None if champion_scored is None else champion_scored.slices(),
        ),
        slice_tolerance=config.registry.slice_tolerance,
        min_slice_images=config.registry.min_slice_images,
        overall=config.registry.overall,
    )
    table = gate_table(decision)
    if not decision.promote:
        verdict = "not promoted"
    elif rollout_follows:
        verdict = (
            f"passed the gate: {config.registry.challenger_alias} until the InferenceService "
            f"serves it, then {config.registry.champion_alias}"
        )
    else:
        verdict = "promoted to champion"
    model_metadata = ModelMetadata.read(export_dir / METADATA_FILENAME)
    metadata = model_metadata.to_dict()
    with mlflow.start_run(run_id=run_id) as run:
        code = CodeVersion.from_tags(run.data.tags) or code_version()
        model_uri = log_onnx_model(export_dir, metadata, reference)
        version = register_model(
            config,
            model_uri,
            {
                **version_tags(code, data, run_id),
                f"test_{metric}": f"{candidate[metric]:.4f}",
                "test_accuracy": f"{candidate['accuracy']:.4f}",
                **slice_tags(decision),
            },
            run_id=run_id,
        )
        record_decision(config, version, decision)
        if decision.promote and rollout_follows:
            set_challenger(config, version, decision)
        elif decision.promote:
            set_champion(config, version, decision)
        card = build_model_card(
            model_name=config.registry.model_name,
            version=version,
            run_id=run_id,
            code=code,
            data=data,
            manifest=manifest,
            test=scored,
            metadata=model_metadata,
            intended_use=config.card.intended_use,
            low_confidence=config.card.low_confidence,
            external=external,
            gate=f"{verdict}: {decision.reason}{note}",
            gate_table=table,
            run_url=_run_url(config, run.info.experiment_id, run_id),
        )
        mlflow.log_text(card, CARD_FILENAME)
        describe_version(
            config,
            version,
            fit_description(card, MAX_DESCRIPTION, f"runs:/{run_id}/{CARD_FILENAME}"),
        )
        mlflow.log_dict(decision.to_dict(), "gate/decision.json")
        mlflow.log_metrics(
            {f"gate_slice_{slice_key(r.slice)}_{metric}": r.candidate for r in decision.slices}
        )
        mlflow.set_tags({"gate.promoted": str(decision.promote), "registered_version": version})
    (out_dir / CARD_FILENAME).write_text(card)
    result = {
        **decision.to_dict(),
        "reason": decision.reason + note,
        "version": version,
        "model_name": config.registry.model_name,
        "model_uri": model_uri,
        "champion_uri": champion_uri(config),
        "git_commit": code.commit,
        "data_version": data.version,
    }
    (out_dir / "decision.json").write_text(json.dumps(result, indent=2))
    if champion_score is not None:
        champion_text = f"champion v{previous}"
    else:
        champion_text = f"champion v{previous} (not comparable)" if previous else "no champion"
    (out_dir / "decision.md").write_text(
        f"# Promotion gate: version {version} {verdict}\n\n{result['reason']}\n\n"
        f"Candidate v{version} against {champion_text} on this run's test set, overall and per "
        f"data slice ({metric}; a slice of at least {config.registry.min_slice_images} images "
        f"may get worse by at most {config.registry.slice_tolerance:.4f}):\n\n{table}\n"
    )
    return result


def _run_url(config: Config, experiment_id: str, run_id: str) -> str | None:
    """The run's page in the MLflow UI, when tracking goes to a server (not the embedded store)."""
    uri = config.mlflow_tracking_uri.rstrip("/")
    if not uri.startswith(("http://", "https://")):
        return None
    return f"{uri}/#/experiments/{experiment_id}/runs/{run_id}"
