"""Dataset versions: content-named, immutable, images stored once, splits per source and stable."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from support import CLASSES, COLORS, jpeg_bytes, make_archive, make_image_tree

from garbage.core.config import Config, load_config
from garbage.training.data.fetch import DataFetchError, fetch_source
from garbage.training.data.split import hash_split, read_manifest, split_dataset
from garbage.training.data.validate import validate_dataset
from garbage.training.data.versions import (
    DatasetStore,
    DatasetVersionError,
    LabelledImage,
    SourceImages,
    SourceSpec,
    VersionNotFoundError,
    apply_version_splits,
    build_version,
    compare_versions,
    images_from_folder,
    label_time,
    list_versions,
    load_source,
    open_store,
    parse_source_spec,
    read_info,
    resolve_version,
    sources_from_labelled,
    version_digest,
    version_manifest,
    version_name,
)
from garbage.training.lineage import data_version
from garbage.training.steps import fetch_step, split_step, validate_step

T0 = datetime(2026, 11, 1, 8, 0, 0)
SMALL = (48, 36)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return load_config(profile="smoke", overrides=[f"work_dir={tmp_path / 'work'}"], environ={})


def folder_source(root: Path, config: Config, name: str = "a", per_class: int = 6) -> SourceImages:
    return images_from_folder(make_image_tree(root, per_class=per_class), name, config.data)


def site_images(n: int, seed: int, source: str = "site", start: datetime = T0) -> list:
    """``n`` new small labelled images, round-robin over the classes, dated a minute apart."""
    return [
        LabelledImage(
            jpeg_bytes(COLORS[CLASSES[i % 6]], size=SMALL, seed=100_000 + seed * 1000 + i),
            CLASSES[i % 6],
            source,
            start + timedelta(minutes=i),
        )
        for i in range(n)
    ]


def labelled(items: list, config: Config, staging: Path) -> list[SourceImages]:
    staging.mkdir(parents=True, exist_ok=True)
    return sources_from_labelled(items, config.data, staging)


def splits(manifest: pd.DataFrame) -> dict[str, str]:
    return dict(zip(manifest["sha256"], manifest["split"], strict=True))


def test_digest_ignores_row_order_and_path_and_survives_a_write_and_read(
    config: Config, tmp_path: Path
) -> None:
    result = build_version(config, [folder_source(tmp_path / "a", config)])
    manifest = result.manifest
    digest = version_digest(manifest)
    assert result.name == version_name(digest) == "ds-" + digest[:12]
    assert result.info["digest"] == digest
    shuffled = manifest.sample(frac=1, random_state=1)[list(reversed(manifest.columns))]
    assert version_digest(shuffled) == digest
    assert version_digest(manifest.assign(path="elsewhere/x.jpg")) == digest
    stored = version_manifest(open_store(config), result.name)
    assert version_digest(stored) == digest and stored.equals(manifest)
    relabelled = manifest.copy()
    relabelled.loc[0, "label"] = "trash" if manifest.loc[0, "label"] != "trash" else "glass"
    moved = manifest.copy()
    moved.loc[0, "split"] = "test" if manifest.loc[0, "split"] != "test" else "train"
    assert len({digest, version_digest(relabelled), version_digest(moved)}) == 3


def test_a_version_is_written_once_and_never_changes(config: Config, tmp_path: Path) -> None:
    source = folder_source(tmp_path / "a", config)
    first = build_version(config, [source], now=T0)
    store = open_store(config)
    info_file = store.version_dir(first.name) / "version.json"
    before = info_file.read_bytes()
    again = build_version(config, [source], now=T0 + timedelta(days=1))
    assert first.created and not again.created and again.name == first.name
    assert info_file.read_bytes() == before  # the created time of the first build stays
    assert json.loads(before)["created"] == "2026-11-01T08:00:00+00:00"
    assert not [p for p in store.version_dir(first.name).parent.iterdir() if p.name[0] == "."]


def test_the_same_image_is_stored_once_across_sources_and_versions(
    config: Config, tmp_path: Path
) -> None:
    source = folder_source(tmp_path / "a", config)
    copy = images_from_folder(
        make_image_tree(tmp_path / "copy", per_class=6), "b", config.data
    )  # the same bytes under another source name
    first = build_version(config, [source, copy])
    assert len(first.manifest) == 36 and set(first.manifest["source"]) == {"a"}
    assert first.info["combined"] == {"same image in another source (kept once)": 36}
    second = build_version(config, labelled(site_images(12, 1), config, tmp_path / "s"), first.name)
    files = [p for p in open_store(config).images_dir.rglob("*") if p.is_file()]
    assert len(files) == len(second.manifest) == 48
    for path in files:
        assert path.stem == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_first_source_keeps_the_pipelines_split_and_each_source_gets_its_own(
    config: Config, tmp_path: Path
) -> None:
    a = folder_source(tmp_path / "a", config, per_class=10)
    [site] = labelled(site_images(60, 2), config, tmp_path / "s")
    result = build_version(config, [a, site])
    manifest = result.manifest
    _, kept = validate_dataset(tmp_path / "a", config.data)
    uncapped = config.split.model_copy(update={"max_per_class": None})
    assert {s: v for s, v in splits(manifest).items() if s in set(kept["sha256"])} == splits(
        split_dataset(kept, uncapped)
    )  # a version of one archive splits it exactly as the pipeline does
    for source, n in (("a", 60), ("site", 60)):
        rows = manifest[manifest["source"] == source]
        assert len(rows) == n
        for label in CLASSES:  # stratified per source: each class in each split of each source
            assert set(rows[rows["label"] == label]["split"]) == {"train", "val", "test"}
    counts = result.info["counts"]
    assert counts["source"] == {"a": 60, "site": 60}
    assert counts["source_split_class"]["site"]["test"] == {c: 2 for c in CLASSES}  # 15 % of 10
    assert [s["name"] for s in result.info["sources"]] == ["a", "site"]
    assert result.info["sources"][0]["digest"] != result.info["sources"][1]["digest"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_image_ever_moves_between_splits_as_images_are_added(
    config: Config, tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    current = build_version(config, [folder_source(tmp_path / "a", config)])
    for step in range(3):
        batches = []
        for source in rng.sample(["site", "other"], rng.randint(1, 2)):
            n, draw = rng.randint(1, 8), seed * 10 + step + (5 if source == "other" else 0)
            batches += site_images(n, draw, source, T0 + timedelta(days=step))
        added = labelled(batches, config, tmp_path / f"s{step}")
        following = build_version(config, added, current.name)
        before, after = splits(current.manifest), splits(following.manifest)
        assert {sha: after[sha] for sha in before} == before
        changes = compare_versions(current.manifest, following.manifest)
        assert changes["moved"] == [] and changes["removed"] == 0
        assert changes["added"] == len(after) - len(before) == len(batches)
        assert following.info["parent"] == current.name
        current = following


def test_additions_to_a_known_source_take_the_hash_rule(config: Config, tmp_path: Path) -> None:
    first = build_version(config, labelled(site_images(36, 3), config, tmp_path / "s1"))
    extra = labelled(site_images(7, 4, start=T0 + timedelta(days=1)), config, tmp_path / "s2")
    second = build_version(config, extra, first.name)
    new = second.manifest[~second.manifest["sha256"].isin(first.manifest["sha256"])]
    assert len(new) == 7
    for row in new.itertuples():
        assert row.split == hash_split(row.sha256, config.split, "site")
        assert row.time.startswith("2026-11-02T")


@pytest.mark.parametrize("site_is_new", [True, False])
def test_a_reviews_test_slice_is_drawn_from_its_random_picks_only(
    config: Config, tmp_path: Path, site_is_new: bool
) -> None:
    """Uncertain picks (the hard cases) are trained on; the test slice is a uniform sample."""
    parent = None
    if not site_is_new:
        parent = build_version(config, labelled(site_images(12, 1), config, tmp_path / "p")).name
    items = site_images(60, 2, start=T0 + timedelta(days=1))
    picks = ["random" if i % 5 == 0 else "uncertain" for i in range(len(items))]
    reviewed = [
        dataclasses.replace(item, selection=pick) for item, pick in zip(items, picks, strict=True)
    ]
    unreviewed = site_images(9, 3, start=T0 + timedelta(days=1))  # /feedback, no review
    version = build_version(config, labelled(reviewed + unreviewed, config, tmp_path / "s"), parent)
    rows = version.manifest.set_index("sha256")
    pick_of = {hashlib.sha256(i.image).hexdigest(): p for i, p in zip(reviewed, picks, strict=True)}
    split_of_pick = pd.crosstab(pd.Series(pick_of).rename("pick"), rows.loc[list(pick_of), "split"])
    assert split_of_pick.loc["random", "test"] == round(60 * config.split.test_fraction) == 9
    assert split_of_pick.loc["uncertain"].get("test", 0) == 0
    assert split_of_pick.loc["uncertain", "val"] > 0 and split_of_pick.loc["uncertain", "train"] > 0
    assert split_of_pick.loc["random"].sum() == 12  # 3 random picks left for val and train
    # Images labelled without a review keep the rule they had: the hash rule on a known source.
    if not site_is_new:
        for item in unreviewed:
            sha = hashlib.sha256(item.image).hexdigest()
            assert rows.loc[sha, "split"] == hash_split(sha, config.split, "site")
    # The same labels make the same version: the draw depends on the images only.
    again = build_version(
        config, labelled(reviewed + unreviewed, config, tmp_path / "again"), parent
    )
    assert again.name == version.name and not again.created


def test_a_newer_label_wins_and_the_image_keeps_its_split(config: Config, tmp_path: Path) -> None:
    archive = folder_source(tmp_path / "a", config)
    first = build_version(config, [archive])
    row = first.manifest.iloc[0]
    image = (tmp_path / "a" / row["label"]).glob("*.jpg")
    data = next(p for p in image if hashlib.sha256(p.read_bytes()).hexdigest() == row["sha256"])
    other = "glass" if row["label"] != "glass" else "metal"
    items = [
        LabelledImage(data, other, "site", T0),
        LabelledImage(data.read_bytes(), "paper", "site", T0 - timedelta(hours=1)),  # older
    ]
    second = build_version(config, labelled(items, config, tmp_path / "s"), first.name)
    after = second.manifest.set_index("sha256").loc[row["sha256"]]
    assert after["label"] == other and after["time"] == "2026-11-01T08:00:00Z"
    assert after["split"] == row["split"] and after["source"] == "a"  # its slice stays
    assert second.info["changes"]["relabelled"] == [
        {"sha256": row["sha256"], "from": row["label"], "to": other}
    ]
    assert [(s["name"], s.get("added_in")) for s in second.info["sources"]] == [
        ("a", first.name),
        ("site", None),
    ]
    assert second.info["sources"][1]["dropped"] == {"older label of a re-labelled image": 1}
    assert second.info["combined"] == {"re-labelled by a newer label": 1}


def test_undated_labels_that_disagree_exclude_the_image(config: Config, tmp_path: Path) -> None:
    a = folder_source(tmp_path / "a", config)
    b_root = tmp_path / "b"
    (b_root / "trash").mkdir(parents=True)
    first = next((tmp_path / "a" / "glass").glob("*.jpg"))
    (b_root / "trash" / "x.jpg").write_bytes(first.read_bytes())  # same bytes, another class
    b = images_from_folder(b_root, "b", config.data)
    result = build_version(config, [a, b])
    assert hashlib.sha256(first.read_bytes()).hexdigest() not in set(result.manifest["sha256"])
    assert result.info["combined"] == {"same image under two classes in two sources (excluded)": 2}


def test_what_validation_drops_is_counted_per_reason(config: Config, tmp_path: Path) -> None:
    good = jpeg_bytes(COLORS["glass"], size=SMALL, seed=1)
    items = [
        (good, "glass", "site", T0),
        (good, "glass", "site", T0 + timedelta(minutes=1)),  # logged twice: kept once
        (b"not an image", "paper", "site", T0),
        (jpeg_bytes(COLORS["paper"], size=(8, 8), seed=2), "paper", "site", T0),  # too small
        (jpeg_bytes(COLORS["metal"], size=SMALL, seed=3), "banana", "site", T0),
        (tmp_path / "missing.jpg", "metal", "site", T0),
    ]
    [site] = labelled(items, config, tmp_path / "s")
    assert len(site.table) == 1 and site.table.loc[0, "time"] == "2026-11-01T08:01:00Z"
    assert site.dropped == {
        "duplicate within a class": 1,
        "label not a configured class": 1,
        "unreadable file": 1,
        "invalid image": 2,
    }


def test_a_version_trained_through_the_pipeline_steps_keeps_its_splits_and_sources(
    config: Config, tmp_path: Path
) -> None:
    a = folder_source(tmp_path / "a", config, per_class=4)
    built = build_version(config, [a, *labelled(site_images(24, 5), config, tmp_path / "s")])
    on_version = config.model_copy(
        update={"data": config.data.model_copy(update={"version": built.name})}
    )
    images, checked, manifest_csv = tmp_path / "images", tmp_path / "checked", tmp_path / "m.csv"
    fetched = fetch_step(on_version, images)
    assert fetched["files"] == 48 and fetched["version"] == built.name
    assert fetched["sha256"] == built.info["digest"]
    validate_step(on_version, images, checked)
    summary = split_step(on_version, checked / "images.csv", manifest_csv)
    manifest = read_manifest(manifest_csv)
    assert set(manifest["source"]) == {"a", "site"}
    assert splits(manifest) == splits(built.manifest)  # not split again
    assert sum(sum(c.values()) for c in summary.values()) == 48
    for row in manifest.head(5).itertuples():
        assert (images / row.path).parent.name == row.label
    data = data_version(on_version, manifest)
    assert data.version == built.name and data.name == built.name


def test_a_version_that_validation_would_shrink_is_refused(config: Config, tmp_path: Path) -> None:
    built = build_version(config, [folder_source(tmp_path / "a", config)])
    table = built.manifest[["path", "label", "sha256"]].iloc[1:]
    with pytest.raises(DatasetVersionError, match="1 of its images were left out"):
        apply_version_splits(table, built.manifest, "x")


def test_versions_are_listed_resolved_and_missing_ones_explained(
    config: Config, tmp_path: Path
) -> None:
    store = open_store(config)
    assert resolve_version(store, "latest") is None and list_versions(store) == []
    first = build_version(config, [folder_source(tmp_path / "a", config)], now=T0)
    extra = labelled(site_images(6, 6), config, tmp_path / "s")
    second = build_version(config, extra, first.name, now=T0 + timedelta(hours=1))
    assert [v["name"] for v in list_versions(store)] == [first.name, second.name]
    assert resolve_version(store, "latest") == second.name
    assert resolve_version(store, "none") is None
    assert read_info(store, second.name)["parent"] == first.name
    with pytest.raises(VersionNotFoundError, match="no dataset version ds-000000000000"):
        resolve_version(store, "ds-000000000000")
    with pytest.raises(DatasetVersionError, match="ds-<12 hex digits>"):
        resolve_version(store, "newest")
    with pytest.raises(DatasetVersionError, match="cannot open the datasets root nosuch://"):
        DatasetStore("nosuch://bucket/datasets")  # s3:// is supported: test_dataset_store.py


def test_source_specs() -> None:
    assert parse_source_spec("trashnet") == SourceSpec("trashnet", "trashnet")
    assert parse_source_spec("/data/RealWaste-200.tar.gz") == SourceSpec(
        "realwaste-200", "/data/RealWaste-200.tar.gz"
    )
    sha = "ab" * 32
    assert parse_source_spec(f"site-a=https://h/x.tgz?t=1#sha256={sha.upper()}") == SourceSpec(
        "site-a", "https://h/x.tgz?t=1", sha
    )
    assert parse_source_spec("https://h/p?k=v").name == "p"  # no NAME= prefix: the whole URL
    with pytest.raises(DatasetVersionError, match="NAME="):
        parse_source_spec("/")


def test_label_times_are_utc_with_a_z() -> None:
    nan: Any = float("nan")  # what pandas gives for a missing time
    assert label_time(None) == label_time("") == label_time(nan) == ""
    assert label_time(T0) == "2026-11-01T08:00:00Z"
    assert label_time(pd.Timestamp(T0)) == "2026-11-01T08:00:00Z"
    aware = datetime(2026, 11, 1, 9, 0, tzinfo=UTC) + timedelta(microseconds=5)
    assert label_time(aware) == "2026-11-01T09:00:00.000005Z"
    assert label_time("2026-11-01T10:00:00+01:00") == "2026-11-01T09:00:00Z"
    with pytest.raises(ValueError, match="ISO 8601"):
        label_time("yesterday")


def test_sources_from_folders_and_archives(config: Config, tmp_path: Path) -> None:
    tree = make_image_tree(tmp_path / "src" / "wrapped", per_class=3)
    archive = make_archive(tmp_path / "src", tmp_path / "site.tar.gz")
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    from_archive = load_source(parse_source_spec(str(archive)), config)
    assert (from_archive.name, from_archive.kind, from_archive.digest) == ("site", "archive", sha)
    from_folder = load_source(SourceSpec("f", str(tree)), config)
    assert from_folder.kind == "folder" and len(from_folder.table) == len(from_archive.table) == 18
    assert from_folder.digest == load_source(SourceSpec("f", str(tree)), config).digest
    with pytest.raises(DataFetchError, match="checksum mismatch"):
        fetch_source(str(archive), config.data_cache_dir, "0" * 64)
    with pytest.raises(DataFetchError, match="not supported yet"):
        fetch_source("ftp://host/x.tar.gz", config.data_cache_dir)
    with pytest.raises(DataFetchError, match="neither an existing folder"):
        fetch_source(str(tmp_path / "nowhere"), config.data_cache_dir)
