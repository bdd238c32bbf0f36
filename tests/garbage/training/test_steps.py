"""The steps' manifest helpers: a split's items and their sources line up."""

from __future__ import annotations

import pandas as pd

from garbage.training.steps import manifest_items, manifest_sources


def test_the_sources_of_a_split_follow_its_items() -> None:
    manifest = pd.DataFrame(
        {
            "path": ["a.jpg", "b.jpg", "c.jpg", "d.jpg"],
            "label": ["glass", "paper", "glass", "paper"],
            "source": ["site", "trashnet", "trashnet", "site"],
            "split": ["train", "train", "val", "train"],
        }
    )
    assert manifest_items(manifest, "train", ["glass", "paper"]) == [
        ("a.jpg", 0),
        ("b.jpg", 1),
        ("d.jpg", 1),
    ]
    assert manifest_sources(manifest, "train") == ["site", "trashnet", "site"]
    assert manifest_sources(manifest.drop(columns="source"), "train") is None
