"""The site-adaptation benchmark's own logic, without its processes: the site split (held-out
images never sent as traffic), archive reading, the targets and the report.

``make bench-adapt`` runs the whole benchmark; the report tests read the results it committed
(``bench/results/adapt.json``), the format :func:`write_results` writes.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
from support import CLASSES, jpeg_bytes

from bench import bench_adapt as adapt


def site_images(per_class: int) -> list[Any]:
    return [
        adapt.Image(hashlib.sha256(f"{label}{i}".encode()).hexdigest(), label, f"{label}/{i}", b"")
        for label in CLASSES
        for i in range(per_class)
    ]


def write_archive(path: Path, members: dict[str, bytes]) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return adapt.sha256_of(path)


@pytest.fixture
def report() -> dict[str, Any]:
    return json.loads((adapt.RESULTS / "adapt.json").read_text())


# -- the site split -------------------------------------------------------------------------------


def test_split_site_holds_out_a_disjoint_share_of_each_class() -> None:
    images = site_images(10)
    traffic, held_out = adapt.split_site(images, 0.6, seed=0, per_class=None)
    assert not {i.sha256 for i in traffic} & {i.sha256 for i in held_out}
    assert len(traffic) + len(held_out) == len(images)
    assert adapt.class_counts(traffic) == dict.fromkeys(CLASSES, 6)
    assert adapt.class_counts(held_out) == dict.fromkeys(CLASSES, 4)


def test_split_site_is_the_same_for_a_seed_whatever_the_input_order() -> None:
    images = site_images(10)
    first = adapt.split_site(images, 0.6, seed=3, per_class=None)
    again = adapt.split_site(list(reversed(images)), 0.6, seed=3, per_class=None)
    other = adapt.split_site(images, 0.6, seed=4, per_class=None)
    assert first == again
    assert {i.sha256 for i in first[0]} != {i.sha256 for i in other[0]}


def test_split_site_uses_only_per_class_images_of_each_class() -> None:
    traffic, held_out = adapt.split_site(site_images(10), 0.5, seed=0, per_class=4)
    assert adapt.class_counts(traffic) == dict.fromkeys(CLASSES, 2)
    assert adapt.class_counts(held_out) == dict.fromkeys(CLASSES, 2)


# -- archives -------------------------------------------------------------------------------------


def test_read_archive_keeps_one_image_per_hash_and_drops_one_with_two_classes(
    tmp_path: Path,
) -> None:
    same, ambiguous, other = (jpeg_bytes((200, 10, 10), seed=s) for s in range(3))
    sha = write_archive(
        tmp_path / "site.tar.gz",
        {
            "site/glass/b.jpg": same,
            "site/glass/a.jpg": same,
            "site/glass/c.jpg": ambiguous,
            "site/metal/c.jpg": ambiguous,
            "site/metal/d.jpg": other,
            "site/metal/notes.txt": b"not an image",
        },
    )
    images = adapt.read_archive(tmp_path / "site.tar.gz", sha)
    assert sorted((i.name, i.label) for i in images) == [
        ("site/glass/a.jpg", "glass"),
        ("site/metal/d.jpg", "metal"),
    ]
    assert all(hashlib.sha256(i.data).hexdigest() == i.sha256 for i in images)


def test_read_archive_refuses_a_missing_or_different_archive(tmp_path: Path) -> None:
    with pytest.raises(adapt.BenchError, match="is missing"):
        adapt.read_archive(tmp_path / "absent.tar.gz", "0" * 64)
    sha = write_archive(tmp_path / "site.tar.gz", {"glass/a.jpg": jpeg_bytes((1, 2, 3))})
    with pytest.raises(adapt.BenchError, match=f"has sha256 {sha}, expected 00"):
        adapt.read_archive(tmp_path / "site.tar.gz", "0" * 64)


def test_small_archive_is_the_same_bytes_each_time_it_is_written(tmp_path: Path) -> None:
    members = {
        f"t/{label}/{i}.jpg": jpeg_bytes((9, 9, 9), seed=10 * n + i)
        for n, label in enumerate(CLASSES[:2])
        for i in range(3)
    }
    write_archive(tmp_path / "full.tar.gz", members)
    first = adapt.small_archive(tmp_path / "full.tar.gz", tmp_path / "a" / "small.tar.gz", 2)
    again = adapt.small_archive(tmp_path / "full.tar.gz", tmp_path / "b" / "small.tar.gz", 2)
    assert first == again
    images = adapt.read_archive(tmp_path / "a" / "small.tar.gz", first)
    assert sorted(i.name for i in images) == [
        f"t/{c}/{i}.jpg" for c in CLASSES[:2] for i in range(2)
    ]


# -- targets and the report -----------------------------------------------------------------------


def test_targets_recomputed_from_the_committed_report_are_its_own(report: dict) -> None:
    assert adapt.targets(report) == report["targets"]


def loop_row(report: dict, k: int) -> dict:
    return next(row for row in report["loops"] if row["k"] == k)


def test_targets_site_accuracy_met_at_the_threshold_and_not_measured_without_the_loop(
    report: dict,
) -> None:
    report = copy.deepcopy(report)
    loop_row(report, 100)["after"]["site"]["accuracy"] = adapt.SITE_ACCURACY_TARGETS[100]
    report["loops"] = [row for row in report["loops"] if row["k"] != 25]
    found = {t["target"]: t for t in adapt.targets(report)}
    assert found["site accuracy >= 85% with k = 100"]["met"] is True
    assert found["site accuracy >= 75% with k = 25"] == {
        "target": "site accuracy >= 75% with k = 25",
        "measured": None,
        "met": None,
    }


def test_targets_trashnet_may_drop_one_point_and_no_more(report: dict) -> None:
    report = copy.deepcopy(report)
    before = report["champion"]["before"]["trashnet_test"]["accuracy"]
    loop_row(report, 10)["after"]["trashnet_test"]["accuracy"] = before - 0.01
    loop_row(report, 25)["after"]["trashnet_test"]["accuracy"] = before - 0.0101
    met = {t["target"][-6:]: t["met"] for t in adapt.targets(report) if "TrashNet" in t["target"]}
    assert met["k = 10"] is True
    assert met["k = 25"] is False


def test_targets_loop_time_is_the_slowest_loop(report: dict) -> None:
    report = copy.deepcopy(report)
    loop_row(report, 50)["wall_seconds"] = adapt.LOOP_MAX_SECONDS + 1
    (loop_time,) = (t for t in adapt.targets(report) if "one loop" in t["target"])
    assert loop_time == {
        "target": "one loop in at most 20 min",
        "measured": adapt.LOOP_MAX_SECONDS + 1,
        "met": False,
    }


def test_write_results_writes_the_table_and_the_learning_curve(
    report: dict, tmp_path: Path
) -> None:
    adapt.write_results(report, tmp_path)
    assert json.loads((tmp_path / "adapt.json").read_text()) == report
    text = (tmp_path / "adapt.md").read_text()
    row = loop_row(report, 100)
    assert (
        f"| 100 | {row['labels_imported']} | "
        f"{adapt.pct(report['champion']['before']['site']['accuracy'])} -> "
        f"{adapt.pct(row['after']['site']['accuracy'])} |"
    ) in text
    site = report["targets"][0]
    met = "yes" if site["met"] else "NO"
    assert f"| {site['target']} | {adapt.pct(site['measured'])} | {met} |" in text
    assert (tmp_path / "adapt.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_write_results_reports_a_failed_loop_and_draws_no_curve_without_a_finished_one(
    report: dict, tmp_path: Path
) -> None:
    report = copy.deepcopy(report)
    report["loops"] = [{"k": 10, "error": "`garbage retrain` exited with 1; its log is x.log"}]
    report["targets"] = adapt.targets(report)
    adapt.write_results(report, tmp_path)
    text = (tmp_path / "adapt.md").read_text()
    assert "| 10 | - | - | - | - | failed: `garbage retrain` exited with 1" in text
    assert "| one loop in at most 20 min | - | not measured |" in text
    assert not (tmp_path / "adapt.png").exists()


def test_parse_args_refuses_a_traffic_share_outside_zero_to_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        adapt.parse_args(["--traffic-share", "1"])
    assert "--traffic-share must lie between 0 and 1" in capsys.readouterr().err
