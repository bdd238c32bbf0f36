"""What to label next: the logged images a person should label, picked from the store's rows.

Plain functions on a DataFrame of ``inference_log`` rows (:data:`REVIEW_COLUMNS`, as
``InferenceStore.load_window`` reads them):

1. **Candidates** (:func:`candidates`): rows with a prediction and an image (``image_sha256``),
   without a true label, whose image is neither labelled in another row nor exported for
   labelling before (the ledger, :func:`read_ledger`). Exact duplicates (one ``image_sha256``)
   count once. An image retention has deleted since is passed over when it would be picked.
2. **Uncertainty** (:func:`uncertainty`): ``margin`` (top-1 minus top-2 probability; small is
   uncertain) and ``entropy`` (of the class probabilities, in nats; large is uncertain) from the
   logged ``probabilities``. A row that logged only a score is read as if the rest of the
   probability went to one other class.
3. **Selection** (:func:`select_for_review`): a uniform random share of the budget first, drawn
   with a seeded generator from every candidate, so that live accuracy measured on the labelled
   random rows estimates accuracy on the traffic without bias (they are marked
   ``selection = "random"``); then the most uncertain candidates, balanced over predicted
   classes (an equal quota each; what a class cannot fill goes to the most uncertain of the
   rest), skipping near duplicates (dHash Hamming distance at most a threshold) of anything
   picked, labelled or exported before, so the most uncertain image of a group is the one kept.
   The random share is not thinned by near duplicates: that would bias it towards unusual
   images.

The ledger is a CSV file of every image exported for labelling (``image_sha256``,
``image_dhash``, the row, the selection, when and into which file); :func:`append_ledger` adds an
export's picks to it, so the next review does not pick them again.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from garbage.core.names import SELECTION_RANDOM, SELECTION_UNCERTAIN

STRATEGIES = ("margin", "entropy")
#: Largest dHash Hamming distance (of 64 bits) at which two images count as near duplicates.
DEFAULT_NEAR_DUPLICATE = 6
DEFAULT_RANDOM_SHARE = 0.2
#: The store columns a review reads.
REVIEW_COLUMNS = (
    "inference_id",
    "item",
    "ts",
    "model_id",
    "prediction",
    "score",
    "probabilities",
    "true_label",
    "image_sha256",
    "image_dhash",
)
#: The ledger's columns, in file order.
LEDGER_COLUMNS = (
    "image_sha256",
    "image_dhash",
    "inference_id",
    "item",
    "selection",
    "exported_at",
    "export",
)
#: The CSV export's columns.
CSV_COLUMNS = (
    "inference_id",
    "item",
    "sha256",
    "image_url",
    "prediction",
    "score",
    "margin",
    "entropy",
    "selection",
)


class ReviewError(ValueError):
    """A review that cannot be made as asked (bad option, unreadable ledger, missing column)."""


def _present(series: pd.Series) -> pd.Series:
    """True where a text column holds a non-empty value."""
    return series.notna() & (series.astype("string").str.len() > 0)


def _probabilities(text: object) -> list[float] | None:
    """The logged probabilities (JSON of class to probability) as a list; None if unusable."""
    if not isinstance(text, str) or not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict) or not value:
        return None
    probs = [v for v in value.values() if isinstance(v, int | float) and not isinstance(v, bool)]
    if len(probs) != len(value) or not all(math.isfinite(p) and p >= 0 for p in probs):
        return None
    return [float(p) for p in probs]


def _measures(probs: list[float] | None, score: object) -> tuple[float, float]:
    """``(margin, entropy)`` of one row; NaN for a row with neither probabilities nor a score."""
    if probs is None:
        if not isinstance(score, int | float) or not math.isfinite(score):
            return math.nan, math.nan
        # Only the top probability is known: read it as if the rest went to one other class.
        top = min(max(float(score), 0.0), 1.0)
        probs = [top, 1.0 - top]
    total = sum(probs)
    if total <= 0:
        return math.nan, math.nan
    p = sorted((x / total for x in probs), reverse=True)
    margin = p[0] - (p[1] if len(p) > 1 else 0.0)
    entropy = -sum(x * math.log(x) for x in p if x > 0)
    return margin, entropy + 0.0


def uncertainty(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with ``margin`` and ``entropy`` columns from ``probabilities`` (or ``score``).

    Probabilities are renormalised to sum to 1 (they are logged rounded). Rows with neither
    get NaN.
    """
    out = frame.copy()
    scores = out["score"] if "score" in out else pd.Series([None] * len(out), index=out.index)
    texts = (
        out["probabilities"]
        if "probabilities" in out
        else pd.Series([None] * len(out), index=out.index)
    )
    measured = [
        _measures(_probabilities(t), s)
        for t, s in zip(texts.tolist(), scores.tolist(), strict=True)
    ]
    out["margin"] = [m for m, _ in measured]
    out["entropy"] = [e for _, e in measured]
    return out


def _hash(value: object) -> int | None:
    """One dHash (16 hex digits) as an integer; None if it is not one."""
    if not isinstance(value, str) or len(value) != 16:
        return None
    try:
        return int(value, 16)
    except ValueError:
        return None


def hashes(values: Iterable[object]) -> np.ndarray:
    """The dHashes (16 hex digits) as unsigned 64-bit integers; other values are dropped."""
    return np.array([h for h in map(_hash, values) if h is not None], dtype=np.uint64)


def min_distance(value: int, others: np.ndarray) -> int:
    """The smallest Hamming distance from the dHash ``value`` to any of ``others`` (65 if none).

    The distance of :func:`monitoring.images.hamming`, to many hashes at once.
    """
    if others.size == 0:
        return 65
    return int(np.bitwise_count(np.bitwise_xor(others, np.uint64(value))).min())


@dataclass
class Candidates:
    """The rows that may be picked, one per image, and what was left out and why.

    Attributes:
        pool: Candidate rows (one per ``image_sha256``) with ``margin`` and ``entropy``.
        known_dhashes: dHashes of images already labelled or exported: their near duplicates
            are not picked as uncertain.
        excluded: How many rows were left out, by reason.
    """

    pool: pd.DataFrame
    known_dhashes: np.ndarray
    excluded: dict[str, int] = field(default_factory=dict)


def candidates(
    frame: pd.DataFrame, ledger: pd.DataFrame | None = None, strategy: str = "margin"
) -> Candidates:
    """The rows a review may pick from (see the module's docstring), most uncertain first.

    Args:
        frame: Store rows with :data:`REVIEW_COLUMNS`.
        ledger: Images exported before (:func:`read_ledger`); None for none.
        strategy: The uncertainty that orders them (``margin`` or ``entropy``); of the rows of
            one image, the most uncertain stays.

    Raises:
        ReviewError: ``frame`` lacks a column of :data:`REVIEW_COLUMNS` other than ``ts`` and
            ``model_id``.
    """
    needed = set(REVIEW_COLUMNS) - {"ts", "model_id"}
    missing = sorted(needed - set(frame.columns))
    if missing:
        raise ReviewError(
            f"the store rows lack the columns {missing}: the store predates the image store "
            "(the collector adds them when it opens it)"
        )
    excluded: dict[str, int] = {}
    labelled = frame["true_label"].notna()
    has_image = _present(frame["image_sha256"])
    has_prediction = _present(frame["prediction"])
    excluded["labelled"] = int(labelled.sum())
    excluded["no_image"] = int((~labelled & ~has_image).sum())
    excluded["no_prediction"] = int((~labelled & has_image & ~has_prediction).sum())
    known = frame[labelled & has_image]
    known_sha = set(known["image_sha256"])
    known_dhash = list(known["image_dhash"])
    exported_sha: set[str] = set()
    if ledger is not None and not ledger.empty:
        exported_sha = set(ledger["image_sha256"])
        known_dhash += list(ledger["image_dhash"])
    pool = frame[~labelled & has_image & has_prediction]
    image_labelled = pool["image_sha256"].isin(known_sha)
    image_exported = pool["image_sha256"].isin(exported_sha) & ~image_labelled
    excluded["image_labelled_elsewhere"] = int(image_labelled.sum())
    excluded["exported_before"] = int(image_exported.sum())
    pool = uncertainty(pool[~image_labelled & ~image_exported])
    unmeasured = pool["margin"].isna()
    excluded["no_probabilities"] = int(unmeasured.sum())
    pool = pool[~unmeasured]
    before = len(pool)
    pool = _order(pool, strategy).drop_duplicates("image_sha256", keep="first")
    excluded["exact_duplicates"] = before - len(pool)
    return Candidates(pool.reset_index(drop=True), hashes(known_dhash), excluded)


def review_budget(pool: pd.DataFrame, per_class: int | None, total: int | None) -> int:
    """How many images to export: ``total``, or ``per_class`` times the predicted classes.

    Raises:
        ReviewError: Neither or both given, or not positive.
    """
    if (per_class is None) == (total is None):
        raise ReviewError("give exactly one of per_class (--per-class) and total (--total)")
    if total is not None:
        if total < 1:
            raise ReviewError(f"total must be at least 1, got {total}")
        return total
    assert per_class is not None
    if per_class < 1:
        raise ReviewError(f"per_class must be at least 1, got {per_class}")
    return per_class * int(pool["prediction"].nunique())


@dataclass
class Selection:
    """The rows picked for labelling, in export order, and how they were picked.

    Attributes:
        picks: Candidate rows with ``margin``, ``entropy`` and ``selection`` (``uncertain`` or
            ``random``); random rows are spread evenly among the uncertain ones, so an export
            labelled only in part keeps its random share.
        stats: Counts: the budget, rows read, candidates, picks by selection and class, rows
            left out by reason.
    """

    picks: pd.DataFrame
    stats: dict[str, Any]


def _order(pool: pd.DataFrame, strategy: str) -> pd.DataFrame:
    """``pool`` most uncertain first (ties by id, so the order is reproducible)."""
    if strategy == "margin":
        return pool.sort_values(["margin", "inference_id", "item"], kind="stable")
    key = pool.assign(_neg=-pool["entropy"])
    return key.sort_values(["_neg", "inference_id", "item"], kind="stable").drop(columns="_neg")


def select_for_review(
    frame: pd.DataFrame,
    *,
    per_class: int | None = None,
    total: int | None = None,
    strategy: str = "margin",
    random_share: float = DEFAULT_RANDOM_SHARE,
    seed: int = 0,
    near_duplicate: int = DEFAULT_NEAR_DUPLICATE,
    ledger: pd.DataFrame | None = None,
    is_stored: Callable[[str], bool] | None = None,
) -> Selection:
    """Pick the images to label next from store rows (see the module's docstring).

    Args:
        frame: Store rows with :data:`REVIEW_COLUMNS`.
        per_class: Budget of ``per_class`` images per predicted class (random ones included).
        total: Or a budget of ``total`` images.
        strategy: ``margin`` or ``entropy``.
        random_share: Share of the budget drawn uniformly at random (0 to 1).
        seed: Seed of the random draw: the same rows and seed give the same picks.
        near_duplicate: Largest dHash Hamming distance of a near duplicate; -1 for none.
        ledger: Images exported before (:func:`read_ledger`).
        is_stored: Whether the image store still holds an image (retention deletes images and
            keeps their rows); asked only of the images about to be picked, so a pick is never
            a deleted image and the random share stays uniform over the stored ones. None:
            every image with a hash is stored.

    Raises:
        ReviewError: An option out of range, or a column missing.
    """
    if strategy not in STRATEGIES:
        raise ReviewError(f"strategy must be one of {list(STRATEGIES)}, got {strategy!r}")
    if not 0.0 <= random_share <= 1.0:
        raise ReviewError(f"random_share must be from 0 to 1, got {random_share}")
    if not -1 <= near_duplicate <= 64:
        raise ReviewError(f"near_duplicate must be from -1 (off) to 64, got {near_duplicate}")
    found = candidates(frame, ledger, strategy)
    budget = review_budget(found.pool, per_class, total)
    pool = found.pool
    deleted: set[str] = set()

    def stored(sha256: str) -> bool:
        if is_stored is None or sha256 in deleted:
            return sha256 not in deleted
        if is_stored(sha256):
            return True
        deleted.add(sha256)
        return False

    n_random = round(budget * random_share)
    # Walking a seeded permutation and passing over deleted images draws uniformly from the
    # stored ones, asking the image store only about the images it walks past.
    by_hash = pool.sort_values("image_sha256", kind="stable")
    drawn: list[int] = []
    for position in np.random.default_rng(seed).permutation(len(by_hash)).tolist():
        if len(drawn) == n_random:
            break
        if stored(by_hash["image_sha256"].iat[position]):
            drawn.append(position)
    random_rows = by_hash.iloc[sorted(drawn)]
    rest = _order(pool.drop(index=random_rows.index), strategy)
    picked_dhash = list(random_rows["image_dhash"])
    uncertain_index, near = _pick_uncertain(
        rest, budget - len(random_rows), found.known_dhashes, picked_dhash, near_duplicate, stored
    )
    uncertain_rows = rest.loc[uncertain_index]
    picks = _interleave(
        uncertain_rows.assign(selection=SELECTION_UNCERTAIN),
        random_rows.assign(selection=SELECTION_RANDOM),
    )
    stats: dict[str, Any] = {
        "budget": budget,
        "rows": len(frame),
        "candidates": len(pool),
        "picked": len(picks),
        "uncertain": len(uncertain_rows),
        "random": len(random_rows),
        "per_class": {
            str(k): int(v) for k, v in picks["prediction"].value_counts().sort_index().items()
        },
        "excluded": {**found.excluded, "near_duplicates": near, "image_deleted": len(deleted)},
        "strategy": strategy,
        "seed": seed,
    }
    return Selection(picks.reset_index(drop=True), stats)


def _pick_uncertain(
    ordered: pd.DataFrame,
    count: int,
    known: np.ndarray,
    picked_dhash: list[object],
    near_duplicate: int,
    stored: Callable[[str], bool],
) -> tuple[list[Any], int]:
    """The picks of the uncertain share, and how many rows were skipped as near duplicates.

    Indexes of up to ``count`` rows of ``ordered`` (most uncertain first), balanced over
    ``prediction``, none a near duplicate of ``known``, of another pick or of ``picked_dhash``,
    each one ``stored``.
    """
    if count <= 0 or ordered.empty:
        return [], 0
    classes = list(dict.fromkeys(ordered["prediction"]))  # most uncertain first
    base, extra = divmod(count, len(classes))
    quota = {c: base + (1 if i < extra else 0) for i, c in enumerate(classes)}
    seen = hashes(picked_dhash)
    taken: list[Any] = []
    near: set[Any] = set()
    passed: set[Any] = set()  # near duplicates and deleted images: never picked
    rows = list(
        zip(
            ordered.index,
            ordered["prediction"],
            map(_hash, ordered["image_dhash"]),
            ordered["image_sha256"],
            strict=True,
        )
    )

    def take(index: Any, dhash: int | None, sha256: str) -> bool:
        nonlocal seen
        if (
            near_duplicate >= 0
            and dhash is not None
            and min(min_distance(dhash, known), min_distance(dhash, seen)) <= near_duplicate
        ):
            near.add(index)
            passed.add(index)
            return False
        if not stored(sha256):
            passed.add(index)
            return False
        if dhash is not None:
            seen = np.append(seen, np.uint64(dhash))
        taken.append(index)
        return True

    for index, label, dhash, sha256 in rows:  # each class up to its quota
        if len(taken) == count:
            break
        if quota[label] > 0 and take(index, dhash, sha256):
            quota[label] -= 1
    chosen = set(taken)
    for index, _, dhash, sha256 in rows:  # what a class could not fill: the most uncertain left
        if len(taken) == count:
            break
        if index not in chosen and index not in passed:
            take(index, dhash, sha256)
    order = {index: position for position, (index, *_) in enumerate(rows)}
    return sorted(taken, key=order.__getitem__), len(near)


def _interleave(uncertain: pd.DataFrame, random: pd.DataFrame) -> pd.DataFrame:
    """Uncertain rows in their order with the random rows spread evenly among them."""
    if random.empty or uncertain.empty:
        return pd.concat([uncertain, random])
    position = np.concatenate(
        [
            (np.arange(len(uncertain)) + 0.5) / len(uncertain),
            (np.arange(len(random)) + 0.5) / len(random),
        ]
    )
    both = pd.concat([uncertain, random]).assign(_position=position)
    return both.sort_values("_position", kind="stable").drop(columns="_position")


def image_url(template: str, row: Any) -> str:
    """The image URL of a pick: ``template`` with its fields filled in.

    Fields: ``{sha256}``, ``{key}`` (the image's key in the image store, ``<sha[:2]>/<sha>``,
    for a URL into the bucket such as ``s3://garbage-images/{key}``), ``{inference_id}`` and
    ``{item}``.

    Raises:
        ReviewError: The template names another field.
    """
    from monitoring.images import image_key

    try:
        return template.format(
            sha256=row.image_sha256,
            key=image_key(row.image_sha256) if "{key}" in template else "",
            inference_id=row.inference_id,
            item=row.item,
        )
    except (KeyError, IndexError, ValueError, AttributeError) as e:
        raise ReviewError(
            f"image URL template {template!r} is not usable ({e.__class__.__name__}: {e}); it "
            "may use {sha256}, {key}, {inference_id} and {item}"
        ) from e


def check_template(template: str) -> None:
    """Refuse an image URL template without ``{sha256}`` or ``{key}``, or with unknown fields.

    Raises:
        ReviewError: What is wrong with it.
    """
    if "{sha256}" not in template and "{key}" not in template:
        raise ReviewError(f"image URL template {template!r} must contain {{sha256}} or {{key}}")
    probe = pd.Series({"image_sha256": "0" * 64, "inference_id": "id", "item": 0})
    image_url(template, probe)


def to_tasks(picks: pd.DataFrame, template: str, *, pre_annotate: bool = True) -> list[dict]:
    """Label Studio tasks of the picks (:func:`monitoring.labelstudio.build_task`)."""
    from monitoring.labelstudio import build_task

    tasks = []
    for row in picks.itertuples(index=False):
        score = (
            row.score if isinstance(row.score, int | float) and math.isfinite(row.score) else None
        )
        model_id = getattr(row, "model_id", None)
        tasks.append(
            build_task(
                image_url=image_url(template, row),
                inference_id=row.inference_id,
                item=int(row.item),
                sha256=row.image_sha256,
                prediction=row.prediction if pre_annotate else None,
                score=score,
                model_version=model_id if isinstance(model_id, str) and model_id else None,
                extra={"selection": row.selection},
            )
        )
    return tasks


def to_csv_frame(picks: pd.DataFrame, template: str) -> pd.DataFrame:
    """The CSV export of the picks: :data:`CSV_COLUMNS`."""
    urls = [image_url(template, row) for row in picks.itertuples(index=False)]
    frame = picks.assign(sha256=picks["image_sha256"], image_url=urls)
    return frame.loc[:, list(CSV_COLUMNS)].reset_index(drop=True)


def read_ledger(path: Path) -> pd.DataFrame:
    """The images exported before, from the ledger at ``path`` (empty if it does not exist).

    Raises:
        ReviewError: The file cannot be read or lacks the ledger's columns.
    """
    if not path.exists():
        return pd.DataFrame(columns=list(LEDGER_COLUMNS))
    try:
        ledger = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise ReviewError(f"cannot read the review ledger {path}: {e}") from e
    missing = sorted({"image_sha256", "image_dhash"} - set(ledger.columns))
    if missing:
        raise ReviewError(
            f"the review ledger {path} lacks the columns {missing}: it is not a ledger "
            "`garbage review` wrote; pass another --ledger"
        )
    return ledger


def append_ledger(
    path: Path, picks: pd.DataFrame, export: str, when: datetime | None = None
) -> int:
    """Add the picks of one export to the ledger at ``path`` (created with a header if new).

    Args:
        path: The ledger file.
        picks: :attr:`Selection.picks`.
        export: The export file's name, recorded with each image.
        when: The export's time (default now, UTC).

    Returns:
        The number of images added.
    """
    when = when or datetime.now(UTC).replace(tzinfo=None)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(LEDGER_COLUMNS)
        for row in picks.itertuples(index=False):
            dhash = row.image_dhash if isinstance(row.image_dhash, str) else ""
            writer.writerow(
                [
                    row.image_sha256,
                    dhash,
                    row.inference_id,
                    int(row.item),
                    row.selection,
                    when.isoformat(timespec="seconds"),
                    export,
                ]
            )
        handle.flush()
        os.fsync(handle.fileno())
    return len(picks)


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (no half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
