"""KServe's server without a lifecycle API: health that follows the model, load/unload refused."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from kserve.errors import ModelNotFound, ModelNotReady
from kserve.model_repository import ModelRepository

from serving.kserve_server import (
    LIFECYCLE_REFUSAL,
    ModelLifecycleDisabled,
    NoModelRepository,
    ServingDataPlane,
)
from serving.model import GarbageClassifierModel
from serving.settings import ServingSettings

NAME = "garbage-classifier"


def run(coroutine):
    return asyncio.run(coroutine)


def test_live_and_ready_follow_the_model_from_load_to_stop_and_removal(
    tiny_model_dir: Path,
) -> None:
    repository = ModelRepository()
    plane = ServingDataPlane(model_registry=repository)
    assert run(plane.live()) != {"status": "alive"}  # nothing registered: nothing can answer
    assert run(plane.ready()) is False
    model = GarbageClassifierModel(NAME, tiny_model_dir, ServingSettings(max_batch_size=2))
    repository.update(model)
    assert (run(plane.live()), run(plane.ready())) == ({"status": "no model can answer"}, False)
    model.load()
    assert (run(plane.live()), run(plane.ready())) == ({"status": "alive"}, True)
    assert run(plane.get_model(NAME)) is model
    model.stop()  # what an unload did: the model is there but cannot answer
    assert run(plane.live())["status"] != "alive" and run(plane.ready()) is False
    with pytest.raises(ModelNotReady):
        run(plane.get_model(NAME))
    assert model.ready is False  # refused, not reloaded on the request's event loop
    repository.unload(NAME)
    assert run(plane.live())["status"] != "alive"
    with pytest.raises(ModelNotFound):
        run(plane.get_model(NAME))


def test_load_and_unload_are_refused_and_the_model_stays(tiny_model_dir: Path) -> None:
    repository = ModelRepository()
    model = GarbageClassifierModel(NAME, tiny_model_dir, ServingSettings(max_batch_size=2))
    model.load()
    repository.update(model)
    extension = NoModelRepository(model_registry=repository)
    for action in (extension.load, extension.unload):
        with pytest.raises(ModelLifecycleDisabled) as caught:
            run(action(NAME))
        assert isinstance(caught.value, NotImplementedError)  # KServe maps it to UNIMPLEMENTED
        assert caught.value.reason == LIFECYCLE_REFUSAL
    assert "roll out a new revision" in LIFECYCLE_REFUSAL
    assert repository.get_model(NAME) is model and run(model.healthy()) is True
    model.stop()


def test_server_metadata_offers_no_repository_extension() -> None:
    metadata = ServingDataPlane(model_registry=ModelRepository()).metadata()
    assert metadata["extensions"] == []
    assert metadata["name"] and metadata["version"]
