"""``fetch_data`` under kfp.local: a cold cache, so the task itself verifies and extracts."""

from pathlib import Path

import pytest
from kfp import dsl

from components.fetch_data import fetch_data


@pytest.mark.integration
def test_fetch_data_runs_under_kfp_local(
    kfp_local, config_for, small_archive, fetched: dsl.Dataset, tmp_path: Path
) -> None:
    config = config_for(tmp_path / "work")
    task = fetch_data(config_json=config.model_dump_json())

    images = task.outputs["images"]
    folder = Path(images.path)
    assert folder.is_relative_to(kfp_local.pipeline_root)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    unit = Path(fetched.path)
    assert files == sorted(p.relative_to(unit).as_posix() for p in unit.rglob("*") if p.is_file())
    assert images.metadata == {
        "source": str(small_archive.path),
        "sha256": small_archive.sha256,
        "files": len(files),
    }
    # the task used the run's work dir as its data cache
    assert any(config.data_cache_dir.joinpath("extracted").iterdir())
