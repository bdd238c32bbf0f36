"""``register_model``: register in MLflow, promote through the gate, publish the decision.

Both registrations go to the shared store (the only ones there): the first finds no champion
and is promoted, the second (the same model) does not beat it and is not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import pytest
from kfp import dsl
from mlflow import MlflowClient

from components.register_model import register_model
from garbage.core.config import Config
from garbage.training.data.split import read_manifest
from garbage.training.lineage import code_version, data_version, lineage_tags, run_name


@pytest.fixture(scope="module")
def registrations(
    tmp_path_factory: pytest.TempPathFactory,
    config_json: str,
    trained: dict[str, Any],
    fetched: dsl.Dataset,
    manifest: dsl.Dataset,
    exported: dsl.Model,
    reference: dsl.Dataset,
) -> list[tuple[Any, dsl.Markdown]]:
    results = []
    for _ in range(2):
        folder = tmp_path_factory.mktemp("register")
        decision = dsl.Markdown(name="decision", uri=str(folder / "decision"), metadata={})
        gate = register_model.python_func(
            config_json=config_json,
            run_id=trained["run_id"],
            images=fetched,
            manifest=manifest,
            onnx_model=exported,
            reference=reference,
            decision=decision,
        )
        results.append((gate, decision))
    return results


def _client(config: Config) -> MlflowClient:
    uri = config.mlflow_tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_the_first_model_is_registered_and_promoted(
    registrations: list[tuple[Any, dsl.Markdown]],
    pipeline_config: Config,
    trained: dict[str, Any],
) -> None:
    gate, decision = registrations[0]
    assert gate._fields == ("promoted", "version", "model_uri")
    assert gate.promoted is True and gate.version == "1"
    assert gate.model_uri.startswith("models:/")
    assert decision.metadata == {"promoted": True, "version": "1"}
    text = Path(decision.path).read_text()
    assert text.startswith("# Promotion gate: version 1 promoted to champion")
    assert "no champion yet" in text
    saved = json.loads(Path(decision.path + ".d", "decision.json").read_text())
    assert saved["promote"] is True and saved["model_uri"] == gate.model_uri

    champion = _client(pipeline_config).get_model_version_by_alias(
        pipeline_config.registry.model_name, pipeline_config.registry.champion_alias
    )
    assert str(champion.version) == "1" and champion.run_id == trained["run_id"]


def test_the_trained_run_and_the_registered_version_carry_their_lineage_and_card(
    registrations: list[tuple[Any, dsl.Markdown]],
    pipeline_config: Config,
    trained: dict[str, Any],
    manifest: dsl.Dataset,
) -> None:
    """The smoke profile's real training run: git commit, dirty flag and data version as tags,
    a name that says what it is, each split as a dataset input; the version: the same lineage,
    its card as description."""
    client = _client(pipeline_config)
    run = client.get_run(trained["run_id"])
    code = code_version()
    data = data_version(pipeline_config, read_manifest(Path(manifest.path)))
    tags = lineage_tags(code, data)
    assert {k: run.data.tags.get(k) for k in tags} == tags
    assert run.info.run_name == run_name("train", pipeline_config, data, code)
    contexts = {
        t.value for i in run.inputs.dataset_inputs for t in i.tags if t.key == "mlflow.data.context"
    }
    assert contexts == {"train", "val", "test"}

    gate, decision = registrations[0]
    version = client.get_model_version(pipeline_config.registry.model_name, gate.version)
    assert version.tags["git.commit"] == code.commit
    assert version.tags["data.version"] == data.version
    card = Path(decision.path + ".d", "model_card.md").read_text()
    assert version.description == card
    assert card.startswith("# Model card: garbage-classifier v1\n")
    assert f"`{data.version}` (the split manifest's digest)" in card


def test_the_registered_model_carries_its_metadata_and_reference(
    registrations: list[tuple[Any, dsl.Markdown]], pipeline_config: Config, tmp_path: Path
) -> None:
    gate, _ = registrations[0]
    mlflow.set_tracking_uri(pipeline_config.mlflow_tracking_uri)
    downloaded = Path(mlflow.artifacts.download_artifacts(gate.model_uri, dst_path=str(tmp_path)))
    files = {p.relative_to(downloaded).as_posix() for p in downloaded.rglob("*") if p.is_file()}
    assert {"model.onnx", "metadata.json", "reference/reference.parquet"} <= files


def test_an_equal_model_is_registered_but_not_promoted(
    registrations: list[tuple[Any, dsl.Markdown]], pipeline_config: Config
) -> None:
    gate, decision = registrations[1]
    assert gate.promoted is False and gate.version == "2"
    assert decision.metadata == {"promoted": False, "version": "2"}
    text = Path(decision.path).read_text()
    assert text.startswith("# Promotion gate: version 2 not promoted")
    assert "does not beat champion v1" in text
    champion = _client(pipeline_config).get_model_version_by_alias(
        pipeline_config.registry.model_name, pipeline_config.registry.champion_alias
    )
    assert str(champion.version) == "1"


def test_with_a_rollout_to_follow_a_passing_candidate_becomes_challenger_not_champion(
    registrations: list[tuple[Any, dsl.Markdown]],
    pipeline_config: Config,
    config_json: str,
    trained: dict[str, Any],
    fetched: dsl.Dataset,
    manifest: dsl.Dataset,
    exported: dsl.Model,
    reference: dsl.Dataset,
    tmp_path: Path,
) -> None:
    client = _client(pipeline_config)
    name, registry = pipeline_config.registry.model_name, pipeline_config.registry
    client.delete_registered_model_alias(name, registry.champion_alias)  # no champion: it passes
    try:
        decision = dsl.Markdown(name="decision", uri=str(tmp_path / "decision"), metadata={})
        gate = register_model.python_func(
            config_json=config_json,
            run_id=trained["run_id"],
            images=fetched,
            manifest=manifest,
            onnx_model=exported,
            reference=reference,
            decision=decision,
            rollout_follows=True,
        )
        assert gate.promoted is True and gate.version == "3"
        model = client.get_registered_model(name)
        assert {a: str(v) for a, v in model.aliases.items()} == {registry.challenger_alias: "3"}
        title = Path(decision.path).read_text().splitlines()[0]
        assert title == (
            "# Promotion gate: version 3 passed the gate: challenger until the "
            "InferenceService serves it, then champion"
        )
    finally:  # the other tests share this store
        client.set_registered_model_alias(name, registry.champion_alias, "1")
        client.delete_registered_model_alias(name, registry.challenger_alias)
