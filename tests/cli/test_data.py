"""`garbage data build|versions|show`: versions from an archive and the collector's store."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from support import CLASSES, COLORS, jpeg_bytes, make_archive, make_image_tree
from typer.testing import CliRunner

from cli.app import app
from garbage.training.data.versions import DatasetStore, version_manifest
from monitoring.images import ImageStore
from monitoring.store import InferenceStore

runner = CliRunner()
NOW = datetime.now(UTC).replace(tzinfo=None)  # the store keeps naive UTC times
OLD = NOW - timedelta(days=2)


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, str]:
    """A tiny archive (3 images per class), and a SQLite store with labelled rows and images."""
    make_image_tree(tmp_path / "src" / "dataset", per_class=3)
    archive = make_archive(tmp_path / "src", tmp_path / "tiny.tar.gz")
    db = tmp_path / "monitoring" / "inferences.db"
    images = ImageStore(str(tmp_path / "monitoring" / "images"))  # the default beside the db
    store = InferenceStore(str(db))
    rows = []
    for i in range(12):  # two site images per class, labelled two days ago
        data = jpeg_bytes(COLORS[CLASSES[i % 6]], size=(48, 36), seed=5000 + i)
        rows.append(row(f"r{i}", images.put(data), CLASSES[i % 6], OLD))
    rows.append(row("deleted", hashlib.sha256(b"gone").hexdigest(), "glass", OLD))
    rows.append(row("no-image", None, "glass", OLD))
    fresh = jpeg_bytes(COLORS["metal"], size=(48, 36), seed=9999)
    rows.append(row("fresh", images.put(fresh), "metal", NOW))
    store.insert_rows(pd.DataFrame(rows))
    store.close()
    return {
        "work": str(tmp_path / "work"),
        "archive": str(archive),
        "sha": hashlib.sha256(archive.read_bytes()).hexdigest(),
        "db": str(db),
        "images": str(tmp_path / "monitoring" / "images"),
    }


def row(inference_id: str, sha: str | None, label: str, when: datetime) -> dict[str, object]:
    return {
        "inference_id": inference_id,
        "item": 0,
        "ts": when - timedelta(minutes=5),
        "prediction": "paper",
        "true_label": label,
        "label_time": when,
        "image_sha256": sha,
    }


def options(setup: dict[str, str]) -> list[str]:
    return [
        "--profile",
        "smoke",
        "--set",
        f"work_dir={setup['work']}",
        "--set",
        f"data.source={setup['archive']}",
        "--set",
        f"data.sha256={setup['sha']}",
    ]


def build(setup: dict[str, str], *args: str) -> tuple[str, str]:
    """Run ``garbage data build ARGS``; return the version's name and the output."""
    result = runner.invoke(app, ["data", "build", *args, *options(setup)])
    assert result.exit_code == 0, result.output
    return result.stdout.split()[0], result.stdout


def test_build_from_the_archive_and_the_store(setup: dict[str, str]) -> None:
    args = ("--from", "trashnet", "--from-store", setup["db"], "--min-label-age", "1h")
    name, output = build(setup, *args)
    assert name.startswith("ds-") and "(new)" in output.splitlines()[0]
    assert "| trashnet | test | 1 | 1 | 1 | 1 | 1 | 1 | 6 |" in output
    assert "site: labelled" in output and "12 images" in output
    assert (
        f"store {setup['db']}: 12 labelled images taken; 1 image deleted from the image store, "
        "1 label younger than the minimum label age, 1 no stored image"
    ) in output
    manifest = version_manifest(DatasetStore(Path(setup["work"]) / "datasets"), name)
    assert manifest.groupby("source").size().to_dict() == {"site": 12, "trashnet": 18}
    again, output = build(setup, *args)  # the same rows again: the same version, untouched
    assert again == name and output.startswith(f"{name} (exists already: nothing new)")


def test_a_version_extends_the_latest_and_is_listed_and_shown(setup: dict[str, str]) -> None:
    first, _ = build(setup, "--from", "trashnet")
    second, output = build(setup, "--from-store", setup["db"])  # --parent latest by default
    assert second != first and f"parent {first}" in output
    assert f"changes versus {first}: +13 images (site " in output
    assert "0 moved between splits" in output

    listed = runner.invoke(app, ["data", "versions", *options(setup)])
    assert listed.exit_code == 0, listed.output
    lines = [line for line in listed.stdout.splitlines() if line.startswith("| ds-")]
    assert [line.split()[1] for line in lines] == [first, second]
    assert "| site 13, trashnet 18 |" in lines[1]

    shown = runner.invoke(app, ["data", "show", "latest", "--json", *options(setup)])
    assert shown.exit_code == 0, shown.output
    info = json.loads(shown.stdout)
    assert info["name"] == second and info["parent"] == first
    assert info["counts"]["images"] == 31 and info["changes"]["moved"] == []
    assert [s["name"] for s in info["sources"]] == ["trashnet", "site"]


def test_build_explains_what_is_wrong(setup: dict[str, str], tmp_path: Path) -> None:
    nothing = runner.invoke(app, ["data", "build", *options(setup)])
    assert nothing.exit_code == 2 and "nothing to build from" in nothing.stderr
    missing = runner.invoke(
        app, ["data", "build", "--from", str(tmp_path / "nowhere"), *options(setup)]
    )
    assert missing.exit_code == 1 and "neither an existing folder" in missing.stderr
    unknown = runner.invoke(
        app, ["data", "build", "--from", "trashnet", "--parent", "ds-0123456789ab", *options(setup)]
    )
    assert unknown.exit_code == 1 and "no dataset version ds-0123456789ab" in unknown.stderr
    shown = runner.invoke(app, ["data", "show", "latest", *options(setup)])
    assert shown.exit_code == 1 and "no dataset version 'latest'" in shown.stderr
    age = runner.invoke(
        app,
        ["data", "build", "--from-store", setup["db"], "--min-label-age", "soon", *options(setup)],
    )
    assert age.exit_code == 2 and "not a duration" in age.output
