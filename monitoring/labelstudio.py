"""Label Studio's formats: labelling tasks out, annotation exports in (pure functions, no server).

Follows Label Studio's documented formats (labelstud.io/guide: "Import pre-annotated data",
"Label Studio JSON format of annotated tasks", the ``Choices`` tag):

- a **task** is ``{"data": {...}, "predictions": [...]}``: ``data`` holds the image URL under
  :data:`IMAGE_KEY` (the ``$image`` of the labelling config) and our ids (``inference_id``,
  ``item``, ``sha256``, ``selection``), which Label Studio keeps and exports back unchanged;
  ``predictions`` holds the model's answer as a pre-annotation, one ``choices`` result;
- the **labelling config** (:func:`labelling_config`) is one ``<Image>`` and one single-choice
  ``<Choices>`` over the model's classes;
- an **export** (``JSON`` in Label Studio's export dialog) is a list of tasks, each with its
  ``annotations``: ``result`` (a ``choices`` result of :data:`FROM_NAME`), ``was_cancelled``
  (skipped by the annotator), ``created_at``/``updated_at`` and ``completed_by`` (a user id, or
  an object with ``id`` and ``email`` in newer versions).

:func:`parse_export` reads the latest non-cancelled annotation of every task back to the logged
prediction it labels, ``(inference_id, item)``, with the task's ``selection``, which the label
carries to the store.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from garbage.core.names import SELECTIONS, TRASHNET_CLASSES, Selection

#: The ``name`` of the ``<Choices>`` control: results carry it as ``from_name``.
FROM_NAME = "material"
#: The ``name`` of the ``<Image>`` object: results carry it as ``to_name``.
TO_NAME = "image"
#: The task ``data`` key of the image URL (``value="$image"``).
IMAGE_KEY = "image"
#: How an export names the choice tag's result type.
RESULT_TYPE = "choices"
#: How many problems an error message lists before it says "and N more".
SHOWN_PROBLEMS = 10


class LabelStudioFormatError(ValueError):
    """An export that cannot be read, or tasks in it that cannot be imported.

    Attributes:
        problems: One line per problem, each naming the task.
    """

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)


def labelling_config(classes: Sequence[str] = TRASHNET_CLASSES) -> str:
    """The labelling config XML for a Label Studio project that labels our tasks.

    Args:
        classes: The class names, in the model's order (default: TrashNet's).

    Raises:
        ValueError: No classes, or a class given twice.
    """
    names = list(classes)
    if not names:
        raise ValueError("no classes for the labelling config: pass the model's class names")
    if len(set(names)) != len(names):
        raise ValueError(f"class names must be distinct for the labelling config, got {names}")
    choices = "\n".join(f"    <Choice value={quoteattr(name)}/>" for name in names)
    return (
        "<View>\n"
        f'  <Image name="{TO_NAME}" value="${IMAGE_KEY}"/>\n'
        f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single" required="true">\n'
        f"{choices}\n"
        "  </Choices>\n"
        "</View>\n"
    )


def build_task(
    *,
    image_url: str,
    inference_id: str,
    item: int,
    sha256: str,
    prediction: str | None = None,
    score: float | None = None,
    model_version: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One Label Studio task for one logged image, with the model's answer as a pre-annotation.

    Args:
        image_url: Where Label Studio's browser loads the image from.
        inference_id: The logged inference's id (its CloudEvent ``ce-id``).
        item: The image's position in the request.
        sha256: The image's content hash in the image store.
        prediction: The model's class; None for a task without a pre-annotation.
        score: The model's probability of ``prediction`` (Label Studio sorts tasks by it).
        model_version: Shown in Label Studio next to the pre-annotation.
        extra: More ``data`` fields (e.g. ``{"selection": "random"}``); they cannot replace ours.

    Raises:
        ValueError: ``extra`` names one of the fields this function sets.
    """
    data: dict[str, Any] = {
        IMAGE_KEY: image_url,
        "inference_id": inference_id,
        "item": int(item),
        "sha256": sha256,
    }
    clash = sorted(set(extra or {}) & set(data))
    if clash:
        raise ValueError(f"extra task data may not replace {clash}")
    data.update(extra or {})
    task: dict[str, Any] = {"data": data}
    if prediction is not None:
        annotation: dict[str, Any] = {
            "model_version": model_version or "unknown",
            "result": [
                {
                    "id": f"{sha256[:10]}-{item}",
                    "from_name": FROM_NAME,
                    "to_name": TO_NAME,
                    "type": RESULT_TYPE,
                    "value": {"choices": [prediction]},
                }
            ],
        }
        if score is not None:
            annotation["score"] = float(score)
        task["predictions"] = [annotation]
    return task


@dataclass(frozen=True)
class ImportedLabel:
    """The label an export gives one logged image.

    Attributes:
        inference_id: The logged inference's id.
        item: The image's position in the request.
        label: The chosen class.
        task_id: Label Studio's task id (None where the export has none).
        annotation_id: Label Studio's annotation id.
        completed_by: Who annotated in Label Studio (its user id or e-mail), for the report;
            the collector records the credential's name, not this.
        annotated_at: When the annotation was last changed (Label Studio's ``updated_at``).
        selection: How ``garbage review`` picked the image (the task's ``data.selection``);
            None when the task does not say or says something else.
    """

    inference_id: str
    item: int
    label: str
    task_id: int | str | None = None
    annotation_id: int | str | None = None
    completed_by: str | None = None
    annotated_at: datetime | None = None
    selection: Selection | None = None

    def feedback(self) -> dict[str, Any]:
        """The collector's ``/feedback`` entry for this label."""
        entry: dict[str, Any] = {
            "inference_id": self.inference_id,
            "item": self.item,
            "label": self.label,
        }
        if self.selection is not None:
            entry["selection"] = self.selection
        return entry


@dataclass(frozen=True)
class SkippedTask:
    """A task that gives no label, and why (cancelled, not annotated, superseded)."""

    task_id: int | str | None
    reason: str


@dataclass(frozen=True)
class TaskProblem:
    """A task that cannot be imported: which one (its id, or its position) and what is wrong."""

    task: str
    reason: str

    def __str__(self) -> str:
        return f"{self.task}: {self.reason}"


@dataclass
class ParsedExport:
    """What an export holds: labels to import, tasks skipped, tasks that cannot be imported.

    Attributes:
        labels: One label per labelled image (the latest annotation of the latest task).
        skipped: Tasks without a usable annotation, with the reason.
        invalid: Tasks that cannot be imported, each with what is wrong.
        tasks: How many tasks the export holds.
    """

    labels: list[ImportedLabel] = field(default_factory=list)
    skipped: list[SkippedTask] = field(default_factory=list)
    invalid: list[TaskProblem] = field(default_factory=list)
    tasks: int = 0

    def skipped_by_reason(self) -> dict[str, int]:
        """How many tasks were skipped for each reason."""
        counts: dict[str, int] = {}
        for task in self.skipped:
            counts[task.reason] = counts.get(task.reason, 0) + 1
        return counts


def _task_name(task: Mapping[str, Any], index: int) -> str:
    task_id = task.get("id")
    return f"task {task_id}" if task_id is not None else f"task #{index} (no id)"


def _time(value: object) -> datetime | None:
    """An export timestamp (ISO 8601, ``Z`` or an offset) as naive UTC; None if absent or bad."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed


def _annotator(value: object) -> str | None:
    """``completed_by`` as text: a user id, or the e-mail (else id) of a user object."""
    if isinstance(value, Mapping):
        value = value.get("email") or value.get("id")
    if value is None or isinstance(value, bool):
        return None
    return str(value)


def _item(value: object) -> int | None:
    """The ``item`` of task data: an integer, or digits (a task imported from CSV)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _selection(value: object) -> Selection | None:
    for selection in SELECTIONS:
        if value == selection:
            return selection
    return None


def _choice(annotation: Mapping[str, Any], from_name: str) -> tuple[str | None, str | None]:
    """``(choice, problem)`` of one annotation: the single choice of ``from_name``.

    ``(None, None)``: the annotation has no result of ``from_name`` (an empty submission).
    """
    result = annotation.get("result")
    if result is None:
        return None, None
    if not isinstance(result, list):
        return None, f"its result is {type(result).__name__}, not a list"
    choices: list[object] = []
    for entry in result:
        if not isinstance(entry, Mapping) or entry.get("from_name") != from_name:
            continue
        value = entry.get("value")
        picked = value.get("choices") if isinstance(value, Mapping) else None
        if not isinstance(picked, list):
            return None, f"its {from_name!r} result has no value.choices list"
        choices.extend(picked)
    if not choices:
        return None, None
    if len(choices) > 1:
        return None, f"it chooses {len(choices)} classes {choices}; the config is single-choice"
    choice = choices[0]
    if not isinstance(choice, str):
        return None, f"its choice {choice!r} is not text"
    return choice, None


def _latest(annotations: list[Any]) -> tuple[Mapping[str, Any] | None, int]:
    """The latest non-cancelled annotation, and how many were cancelled.

    Latest by ``updated_at``, else ``created_at``, else the position in the list.
    """
    live = [
        (index, a)
        for index, a in enumerate(annotations)
        if isinstance(a, Mapping) and not a.get("was_cancelled", False)
    ]
    cancelled = sum(1 for a in annotations if isinstance(a, Mapping) and a.get("was_cancelled"))
    if not live:
        return None, cancelled

    def key(entry: tuple[int, Mapping[str, Any]]) -> tuple[datetime, int]:
        index, a = entry
        when = _time(a.get("updated_at")) or _time(a.get("created_at")) or datetime.min
        return when, index

    return max(live, key=key)[1], cancelled


def parse_export(
    export: object,
    classes: Iterable[str] = TRASHNET_CLASSES,
    *,
    from_name: str = FROM_NAME,
    strict: bool = True,
) -> ParsedExport:
    """The labels a Label Studio JSON export gives, back to the logged predictions they label.

    Each task gives the choice of its latest non-cancelled annotation. A task whose annotations
    were all cancelled (skipped in Label Studio), that has none, or whose latest one has no
    choice counts as skipped. When two tasks label the same ``(inference_id, item)``, the later
    annotation wins and the other task counts as skipped.

    Args:
        export: The parsed JSON: a list of tasks (or one task, as cloud target storage writes).
        classes: The classes a choice may be (the model's).
        from_name: The ``<Choices>`` control whose result is the label.
        strict: Raise on any task that cannot be imported; otherwise collect the problems in
            :attr:`ParsedExport.invalid` and return the rest.

    Raises:
        LabelStudioFormatError: Not a list of task objects (a JSON_MIN or CSV export, say), or,
            when ``strict``, a task without our ids or with a choice that is not a class; the
            message names the tasks and what is wrong.
    """
    allowed = list(classes)
    if isinstance(export, Mapping) and "data" in export:
        export = [export]
    if not isinstance(export, list):
        raise LabelStudioFormatError(
            f"a Label Studio JSON export is a list of tasks, got {type(export).__name__}; "
            "export the project as JSON (not JSON_MIN or CSV)"
        )
    parsed = ParsedExport(tasks=len(export))
    chosen: dict[tuple[str, int], tuple[datetime, int, ImportedLabel]] = {}
    for index, task in enumerate(export):
        if not isinstance(task, Mapping):
            raise LabelStudioFormatError(
                f"entry {index} of the export is {type(task).__name__}, not a task object; "
                "export the project as JSON"
            )
        name = _task_name(task, index)
        if "annotations" not in task and "data" not in task:
            raise LabelStudioFormatError(
                f"{name} has neither 'data' nor 'annotations': this is not Label Studio's JSON "
                "export (JSON_MIN puts the fields at the top level); export as JSON"
            )
        data = task.get("data")
        if not isinstance(data, Mapping):
            parsed.invalid.append(TaskProblem(name, "its 'data' is missing or not an object"))
            continue
        inference_id, item = data.get("inference_id"), _item(data.get("item", 0))
        if not isinstance(inference_id, str) or not inference_id or item is None:
            parsed.invalid.append(
                TaskProblem(
                    name,
                    "its data has no inference_id (text) and item (a number from 0): it is not "
                    "one of the tasks `garbage review` exported",
                )
            )
            continue
        annotations = task.get("annotations") or []
        if not isinstance(annotations, list):
            parsed.invalid.append(TaskProblem(name, "its 'annotations' is not a list"))
            continue
        latest, cancelled = _latest(annotations)
        if latest is None:
            reason = "cancelled" if cancelled else "not annotated"
            parsed.skipped.append(SkippedTask(task.get("id"), reason))
            continue
        choice, problem = _choice(latest, from_name)
        if problem:
            parsed.invalid.append(TaskProblem(name, f"annotation {latest.get('id')}: {problem}"))
            continue
        if choice is None:
            parsed.skipped.append(SkippedTask(task.get("id"), f"no {from_name!r} choice"))
            continue
        if choice not in allowed:
            parsed.invalid.append(
                TaskProblem(
                    name,
                    f"annotation {latest.get('id')} chooses {choice!r}, which is not one of the "
                    f"classes {allowed}: fix the project's labelling config (`garbage labels "
                    "config`) and the annotation",
                )
            )
            continue
        when = _time(latest.get("updated_at")) or _time(latest.get("created_at"))
        label = ImportedLabel(
            inference_id=inference_id,
            item=item,
            label=choice,
            task_id=task.get("id"),
            annotation_id=latest.get("id"),
            completed_by=_annotator(latest.get("completed_by")),
            annotated_at=when,
            selection=_selection(data.get("selection")),
        )
        key = (inference_id, item)
        rank = (when or datetime.min, index)
        previous = chosen.get(key)
        if previous is not None:
            loser = label if rank < previous[:2] else previous[2]
            winner = previous[2] if loser is label else label
            parsed.skipped.append(
                SkippedTask(
                    loser.task_id, f"superseded by a later annotation (task {winner.task_id})"
                )
            )
            if loser is label:
                continue
        chosen[key] = (*rank, label)
    parsed.labels = [entry[2] for entry in chosen.values()]
    if strict and parsed.invalid:
        problems = [str(problem) for problem in parsed.invalid]
        raise LabelStudioFormatError(_problems_message(problems), problems)
    return parsed


def _problems_message(problems: Sequence[str]) -> str:
    shown = "; ".join(problems[:SHOWN_PROBLEMS])
    more = f"; and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
    return f"{len(problems)} task(s) cannot be imported: {shown}{more}"


def load_export(
    path: Path,
    classes: Iterable[str] = TRASHNET_CLASSES,
    *,
    from_name: str = FROM_NAME,
    strict: bool = True,
) -> ParsedExport:
    """:func:`parse_export` of a Label Studio JSON export file.

    Raises:
        LabelStudioFormatError: The file cannot be read or is not JSON (the message says where),
            or what :func:`parse_export` raises.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise LabelStudioFormatError(f"cannot read the export {path}: {e}") from e
    try:
        export = json.loads(text)
    except json.JSONDecodeError as e:
        raise LabelStudioFormatError(
            f"{path} is not JSON ({e.msg} at line {e.lineno}, column {e.colno}); "
            "export the Label Studio project as JSON"
        ) from e
    return parse_export(export, classes, from_name=from_name, strict=strict)
