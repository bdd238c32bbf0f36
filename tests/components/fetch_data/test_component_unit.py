"""``fetch_data``: verify the archive's sha256, publish its class folders, record the source."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
from kfp import dsl
from support import DEV_ARCHIVE_SHA256

from components.fetch_data import fetch_data
from garbage.core.config import Config
from garbage.training.data.fetch import DataFetchError


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_fetch_publishes_the_archives_class_folders_and_records_the_source(
    fetched: dsl.Dataset, small_archive, pipeline_config: Config
) -> None:
    with tarfile.open(small_archive.path) as tar:
        # The archive wraps its class folders in one folder; the artifact holds the classes.
        packed = {
            m.name.removeprefix("dataset/"): tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }
    images = Path(fetched.path)
    assert sorted(p.name for p in images.iterdir()) == pipeline_config.data.classes
    assert _files(images) == packed
    assert fetched.metadata == {
        "source": str(small_archive.path),
        "sha256": small_archive.sha256,
        "files": len(packed),
    }
    # the verified archive and its extracted tree stay cached in the work dir
    assert any(pipeline_config.data_cache_dir.joinpath("archives").iterdir())


def test_fetch_of_the_real_archive_publishes_all_its_photos(
    dev_images: dsl.Dataset, dev_archive: Path
) -> None:
    counts = {d.name: len(list(d.iterdir())) for d in Path(dev_images.path).iterdir()}
    # ../shared/data/README.md: the development copy's census
    assert counts == {
        "cardboard": 343,
        "glass": 426,
        "metal": 348,
        "paper": 505,
        "plastic": 410,
        "trash": 116,
    }
    assert dev_images.metadata == {
        "source": str(dev_archive),
        "sha256": DEV_ARCHIVE_SHA256,
        "files": 2148,
    }


def test_a_checksum_mismatch_fails_and_publishes_nothing(
    config_for, small_archive, tmp_path: Path
) -> None:
    wrong = "f" * 64
    config = config_for(tmp_path / "work", f"data.sha256={wrong}")
    images = dsl.Dataset(name="images", uri=str(tmp_path / "fetch" / "images"), metadata={})
    with pytest.raises(
        DataFetchError, match=f"expected sha256 {wrong}, got {small_archive.sha256}"
    ):
        fetch_data.python_func(config_json=config.model_dump_json(), images=images)
    assert not Path(images.path).exists()
    assert images.metadata == {}


def test_a_missing_source_is_a_clear_error(config_for, tmp_path: Path) -> None:
    config = config_for(tmp_path / "work", f"data.source={tmp_path / 'nowhere.tar.gz'}")
    images = dsl.Dataset(name="images", uri=str(tmp_path / "images"), metadata={})
    with pytest.raises(DataFetchError, match="neither an http\\(s\\) URL nor an existing file"):
        fetch_data.python_func(config_json=config.model_dump_json(), images=images)
    assert not Path(images.path).exists()
