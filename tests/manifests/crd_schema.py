"""Custom resources checked against the structural schemas of the pinned upstream CRDs.

No Kubernetes API server runs on the development and CI machines, so this does what one would do
with a custom resource on create or update, with the CRDs of the releases that
``manifests/crds.lock`` pins: select the CRD by group and kind and the served version by
``apiVersion``, then, against that version's ``openAPIV3Schema``,

- report unknown fields, as ``kubectl`` (server-side strict field validation) does where the
  API server would prune them: an object schema with ``properties`` (or with neither
  ``properties`` nor ``additionalProperties``) admits no other key unless it has
  ``x-kubernetes-preserve-unknown-fields: true``; an ``additionalProperties`` schema is a map;
- drop nulls of non-nullable fields and apply ``default`` values, in the API server's order;
- validate with ``jsonschema`` (types, ``required``, ``enum``, patterns, bounds; ``date-time``
  formats), honouring ``nullable``, ``x-kubernetes-int-or-string``,
  ``x-kubernetes-embedded-resource`` and the uniqueness of ``x-kubernetes-list-type`` set and map
  lists; ``metadata`` as ObjectMeta (name, namespace, string maps of labels and annotations).

CEL rules (``x-kubernetes-validations``) are not evaluated; :meth:`CrdSchemas.cel_rules` lists
those that apply to a kind. A test helper, importable as ``manifests.crd_schema`` through pytest's
``pythonpath``::

    crds = CrdSchemas.load(locate_crds())
    crds.problems(doc)  # ["InferenceService/x: spec.predictor.minReplica: unknown field (...)"]
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCK = REPO_ROOT / "manifests" / "crds.lock"
#: Where the CRDs are looked for, after $GARBAGE_CRDS_DIR: the shared folder beside the checkout,
#: then what scripts/fetch-crds.sh writes.
CRD_DIRS = (REPO_ROOT.parent / "shared" / "crds", REPO_ROOT / ".crds")
ENV_DIR = "GARBAGE_CRDS_DIR"

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_LABEL_VALUE = {
    "type": "string",
    "maxLength": 63,
    "pattern": r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$",
}
_STRINGS = {"type": "array", "items": {"type": "string"}}


def _fields(schema: dict[str, Any], *names: str) -> dict[str, Any]:
    return {name: copy.deepcopy(schema) for name in names}


#: ObjectMeta as the API server decodes and validates it (metav1.ObjectMeta, Kubernetes 1.33).
OBJECT_META: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {
            "type": "string",
            "maxLength": 253,
            "pattern": rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$",
        },
        "generateName": {"type": "string"},
        "namespace": {"type": "string", "maxLength": 63, "pattern": rf"^{_DNS_LABEL}$"},
        "labels": {"type": "object", "additionalProperties": _LABEL_VALUE},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "finalizers": _STRINGS,
        "ownerReferences": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["apiVersion", "kind", "name", "uid"],
                "properties": {
                    **_fields({"type": "string"}, "apiVersion", "kind", "name", "uid"),
                    **_fields({"type": "boolean"}, "controller", "blockOwnerDeletion"),
                },
            },
        },
        **_fields({"type": "string"}, "uid", "resourceVersion", "selfLink"),
        **_fields({"type": "integer"}, "generation", "deletionGracePeriodSeconds"),
        **_fields(
            {"type": ["string", "null"], "format": "date-time"},
            "creationTimestamp",
            "deletionTimestamp",
        ),
        "managedFields": {"type": "array", "items": {"type": "object"}},
    },
}
#: Keywords of a structural schema that mean the same in JSON Schema draft 4.
_VALUE_KEYWORDS = (
    "type",
    "format",
    "enum",
    "required",
    "pattern",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-embedded-resource",
)
_RFC3339 = re.compile(r"^\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)$")


class CrdError(RuntimeError):
    """The CRD files are missing or not what the lock says."""


@dataclass(frozen=True)
class LockEntry:
    """One CRD file that ``manifests/crds.lock`` pins."""

    project: str
    version: str
    repository: str
    tag: str
    path: str
    file: str
    sha256: str

    @property
    def folder(self) -> str:
        """Its folder in a CRD directory: ``<project>-<version>``."""
        return f"{self.project}-{self.version}"

    @property
    def url(self) -> str:
        """Where scripts/fetch-crds.sh downloads it from."""
        return f"https://raw.githubusercontent.com/{self.repository}/{self.tag}/{self.path}/{self.file}"


def read_lock(path: Path = LOCK) -> list[LockEntry]:
    """The entries of the lock file (scripts/fetch-crds.sh reads the same format)."""
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 7:
            raise CrdError(f"{path}:{number}: want 7 fields (see the header), got {len(fields)}")
        entries.append(LockEntry(*fields))
    return entries


def locate_crds(environ: Mapping[str, str] = os.environ) -> Path | None:
    """The CRD directory: ``$GARBAGE_CRDS_DIR``, else ../shared/crds, else .crds; None if none.

    Raises:
        CrdError: ``$GARBAGE_CRDS_DIR`` is set but is not a folder.
    """
    if environ.get(ENV_DIR):
        folder = Path(environ[ENV_DIR])
        if not folder.is_dir():
            raise CrdError(f"{ENV_DIR}={folder} is not a folder; unset it or fix the path")
        return folder
    return next((d for d in CRD_DIRS if d.is_dir()), None)


def require_crds_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """The CRD directory for a test; skips it when there is none, or fails it when $CI is set."""
    import pytest

    folder = locate_crds(environ)
    if folder is None:
        why = (
            f"no CRD folder (${ENV_DIR}, {CRD_DIRS[0]}, {CRD_DIRS[1]}): run scripts/fetch-crds.sh "
            "(needs internet access) to check custom resources against the upstream CRDs"
        )
        if environ.get("CI"):
            pytest.fail(f"{why}; CI is set, where this check must not be skipped")
        pytest.skip(why)
    return folder.resolve()


def pinned_crds() -> CrdSchemas:
    """The CRDs that manifests/crds.lock pins, for a test (see :func:`require_crds_dir`)."""
    return _load_pinned(require_crds_dir())


@cache
def _load_pinned(folder: Path) -> CrdSchemas:
    return CrdSchemas.load(folder, sorted({e.folder for e in read_lock()}))


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """YAML 1.1 reads a bare ``=`` (an enum value in the Prometheus Operator CRDs) as a 'value'."""


_Loader.add_constructor(
    "tag:yaml.org,2002:value", lambda loader, node: loader.construct_scalar(node)
)


@dataclass
class _Crd:
    group: str
    kind: str
    origin: str  # "kserve v0.20.0"
    schemas: dict[str, dict[str, Any] | None]  # served version -> openAPIV3Schema (None: none)
    unserved: tuple[str, ...]
    prune: bool  # apiextensions.k8s.io/v1 always prunes; v1beta1 only with preserveUnknownFields


def _origin(folder: str) -> str:
    project, _, version = folder.rpartition("-")
    return f"{project} {version}"


def _read_crds(path: Path, origin: str) -> Iterator[_Crd]:
    for doc in yaml.load_all(path.read_text(), Loader=_Loader):
        if not doc or doc.get("kind") != "CustomResourceDefinition":
            continue
        spec = doc["spec"]
        versions = spec.get("versions") or [{"name": spec["version"], "served": True}]
        shared = (spec.get("validation") or {}).get("openAPIV3Schema")
        schemas = {
            v["name"]: (v.get("schema") or {}).get("openAPIV3Schema", shared)
            for v in versions
            if v.get("served", True)
        }
        yield _Crd(
            group=spec["group"],
            kind=spec["names"]["kind"],
            origin=origin,
            schemas=schemas,
            unserved=tuple(v["name"] for v in versions if not v.get("served", True)),
            prune=doc["apiVersion"] == "apiextensions.k8s.io/v1"
            or spec.get("preserveUnknownFields") is False,
        )


def _to_json_schema(node: dict[str, Any], prune: bool, root: bool = False) -> dict[str, Any]:
    """A structural schema node as JSON Schema draft 4; what the API server prunes fails."""
    out = {k: node[k] for k in _VALUE_KEYWORDS if k in node}
    if node.get("x-kubernetes-int-or-string") and "type" not in out:
        out["type"] = ["integer", "string"]
    properties = {k: _to_json_schema(v, prune) for k, v in (node.get("properties") or {}).items()}
    if root or node.get("x-kubernetes-embedded-resource"):
        properties |= {"apiVersion": {"type": "string"}, "kind": {"type": "string"}}
        properties["metadata"] = OBJECT_META
    if properties:
        out["properties"] = properties
    if "items" in node:
        out["items"] = _to_json_schema(node["items"], prune)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        out["additionalProperties"] = _to_json_schema(extra, prune)
    elif (
        prune
        and extra is None
        and not node.get("x-kubernetes-preserve-unknown-fields")
        and (properties or node.get("type") == "object")
    ):
        out["additionalProperties"] = False
    for junctor in ("allOf", "anyOf", "oneOf"):
        if junctor in node:  # value validation only: never prunes
            out[junctor] = [_to_json_schema(n, prune=False) for n in node[junctor]]
    if "not" in node:
        out["not"] = _to_json_schema(node["not"], prune=False)
    if node.get("nullable"):
        return {"anyOf": [{"type": "null"}, out]}
    return out


def _prune_nulls_and_default(value: Any, node: dict[str, Any] | None) -> None:
    """Drop non-nullable nulls without a default, then apply defaults (the API server's order)."""
    if node is None:
        return
    if isinstance(value, dict):
        properties = node.get("properties") or {}
        extra = node.get("additionalProperties")
        extra = extra if isinstance(extra, dict) else None
        for key in list(value):
            sub = properties.get(key, extra)
            if value[key] is None and sub is not None and not sub.get("nullable"):
                if "default" in sub:
                    value[key] = copy.deepcopy(sub["default"])
                else:
                    del value[key]
        for key, sub in properties.items():
            if "default" in sub and key not in value:
                value[key] = copy.deepcopy(sub["default"])
        for key, item in value.items():
            _prune_nulls_and_default(item, properties.get(key, extra))
    elif isinstance(value, list):
        for item in value:
            _prune_nulls_and_default(item, node.get("items"))


def _list_type(validator: Any, list_type: str, instance: Any, schema: dict[str, Any]) -> Any:
    if not isinstance(instance, list):
        return
    keys = schema.get("x-kubernetes-list-map-keys") or []
    seen: set[str] = set()
    for i, item in enumerate(instance):
        if list_type == "set":
            key = json.dumps(item, sort_keys=True)
        elif list_type == "map" and isinstance(item, dict):
            key = json.dumps([item.get(k) for k in keys])
        else:
            continue
        if key in seen:
            what = "value" if list_type == "set" else f"{'/'.join(keys)} {key}"
            yield jsonschema.ValidationError(
                f"[{i}] duplicates an earlier entry's {what} (x-kubernetes-list-type: {list_type})"
            )
        seen.add(key)


def _embedded_resource(validator: Any, embedded: bool, instance: Any, schema: Any) -> Any:
    if embedded and isinstance(instance, dict):
        for key in ("apiVersion", "kind"):
            if not instance.get(key):
                yield jsonschema.ValidationError(f"{key!r} is a required property")


def _is_integer(checker: Any, instance: Any) -> bool:
    # JSON has one number type: the API server takes 2.0 for an integer.
    return (isinstance(instance, int) and not isinstance(instance, bool)) or (
        isinstance(instance, float) and instance.is_integer()
    )


def _is_date_time(instance: object) -> bool:
    if not isinstance(instance, str):
        return True
    if not _RFC3339.match(instance):
        return False
    datetime.datetime.fromisoformat(instance.upper().replace("Z", "+00:00"))
    return True


_FORMATS = jsonschema.FormatChecker(formats=())
_FORMATS.checks("date-time", raises=ValueError)(_is_date_time)
_Validator = jsonschema.validators.extend(
    jsonschema.Draft4Validator,
    validators={
        "x-kubernetes-list-type": _list_type,
        "x-kubernetes-embedded-resource": _embedded_resource,
    },
    type_checker=jsonschema.Draft4Validator.TYPE_CHECKER.redefine("integer", _is_integer),
)


def _path(parts: Iterable[Any]) -> str:
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z0-9_-]+", str(part)):
            text += f".{part}" if text else str(part)
        else:
            text += f"[{part}]"
    return text


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _messages(error: jsonschema.ValidationError) -> Iterator[tuple[str, str]]:
    """``(path, what is wrong)`` for one jsonschema error."""
    where = list(error.absolute_path)
    instance, keyword, expected = error.instance, error.validator, error.validator_value
    if keyword == "additionalProperties" and expected is False:
        known = error.schema.get("properties") or {}
        for key in instance:
            if key not in known:
                yield _path([*where, key]), "unknown field"
    elif keyword in ("required", "x-kubernetes-embedded-resource"):
        field = error.message.split("'")[1]
        yield _path([*where, field]), "required field is missing"
    elif keyword == "type":
        wanted = " or ".join(expected) if isinstance(expected, list) else expected
        yield _path(where), f"must be {wanted}, not {type(instance).__name__} {_short(instance)}"
    elif keyword == "pattern":
        yield _path(where), f"{_short(instance)} does not match {expected}"
    elif keyword == "enum":
        yield _path(where), f"{_short(instance)} is not one of {_short(expected)}"
    elif keyword == "anyOf" and error.context:
        # int-or-string and nullable nodes: say what the value is, not each branch's complaint.
        reasons = sorted({e.message for e in error.context if e.validator != "type"})
        detail = f" ({'; '.join(reasons)})" if reasons else ""
        yield _path(where), f"{_short(instance)} matches none of the allowed forms{detail}"
    else:
        yield _path(where), error.message if len(error.message) < 200 else error.message[:197]


class CrdSchemas:
    """The served versions of a set of CRDs, and the problems of custom resources against them.

    Args:
        crds: The CRDs by ``(group, kind)``.
    """

    def __init__(self, crds: Mapping[tuple[str, str], _Crd]) -> None:
        self._crds = dict(crds)
        self._validators: dict[tuple[str, str, str], Any] = {}

    @classmethod
    def load(cls, crds_dir: Path, folders: Iterable[str] | None = None) -> CrdSchemas:
        """Read the CRDs under ``crds_dir/<project>-<version>/`` (all folders, or ``folders``).

        Raises:
            CrdError: A folder is missing, or two CRDs define the same group and kind.
        """
        crds_dir = Path(crds_dir)
        names = (
            sorted(folders)
            if folders is not None
            else sorted(p.name for p in crds_dir.iterdir() if p.is_dir())
        )
        crds: dict[tuple[str, str], _Crd] = {}
        for name in names:
            folder = crds_dir / name
            if not folder.is_dir():
                raise CrdError(
                    f"{folder} is missing: run scripts/fetch-crds.sh, or point {ENV_DIR} at a "
                    "folder with the CRDs that manifests/crds.lock pins"
                )
            for path in sorted(folder.glob("*.yaml")):
                for crd in _read_crds(path, _origin(name)):
                    key = (crd.group, crd.kind)
                    if key in crds:
                        raise CrdError(
                            f"{crd.kind}.{crd.group} is defined by both {crds[key].origin} and "
                            f"{crd.origin}: load one version of each project"
                        )
                    crds[key] = crd
        return cls(crds)

    def kinds(self) -> set[tuple[str, str]]:
        """The ``(group, kind)`` pairs that the loaded CRDs define."""
        return set(self._crds)

    def origin(self, api_version: str, kind: str) -> str | None:
        """``"kserve v0.20.0"``: the project and release whose CRD defines the kind, if any."""
        crd = self._crds.get((api_version.rpartition("/")[0], kind))
        return crd.origin if crd else None

    def cel_rules(self, api_version: str, kind: str) -> list[str]:
        """The CEL rules (``x-kubernetes-validations``) of a kind's schema: not checked here."""
        schema = self._schema(api_version, kind)
        rules: list[str] = []

        def walk(node: Any, path: str) -> None:
            if not isinstance(node, dict):
                return
            rules.extend(
                f"{path or '(root)'}: {r['rule']}"
                for r in node.get("x-kubernetes-validations") or []
            )
            for key, sub in (node.get("properties") or {}).items():
                walk(sub, f"{path}.{key}" if path else key)
            walk(node.get("items"), f"{path}[]")
            walk(node.get("additionalProperties"), f"{path}[*]")

        walk(schema, "")
        return rules

    def _schema(self, api_version: str, kind: str) -> dict[str, Any] | None:
        crd = self._crds.get((api_version.rpartition("/")[0], kind))
        return crd.schemas.get(api_version.rpartition("/")[2]) if crd else None

    def problems(self, obj: Mapping[str, Any]) -> list[str]:
        """What an API server with these CRDs would refuse in ``obj`` (empty when it accepts it).

        Each problem reads ``Kind/name: field.path: what is wrong (project version CRD)``.
        """
        kind, api_version = obj.get("kind"), obj.get("apiVersion")
        name = (
            (obj.get("metadata") or {}).get("name")
            if isinstance(obj.get("metadata"), dict)
            else None
        )
        where = f"{kind}/{name}"
        if not isinstance(kind, str) or not isinstance(api_version, str) or "/" not in api_version:
            return [
                f"{where}: apiVersion {api_version!r} and kind {kind!r} name no custom resource"
            ]
        group, _, version = api_version.rpartition("/")
        crd = self._crds.get((group, kind))
        if crd is None:
            pinned = ", ".join(sorted({c.origin for c in self._crds.values()}))
            return [
                f"{where}: no pinned CRD defines {kind} in {group} (pinned: {pinned}); add the "
                "project's CRD to manifests/crds.lock and fetch it (scripts/fetch-crds.sh)"
            ]
        if version not in crd.schemas:
            state = "does not serve" if version in crd.unserved else "has no version"
            return [
                f"{where}: apiVersion: the {crd.origin} CRD {state} {version} "
                f"(served: {', '.join(sorted(crd.schemas))})"
            ]
        schema = crd.schemas[version]
        if schema is None:
            return [
                f"{where}: the {crd.origin} CRD has no schema for {version} (an "
                "apiextensions.k8s.io/v1beta1 CRD, which Kubernetes >= 1.22 cannot install): "
                "nothing to validate it against; pin a release with a structural schema"
            ]
        key = (group, kind, version)
        if key not in self._validators:
            self._validators[key] = _Validator(
                _to_json_schema(schema, crd.prune, root=True), format_checker=_FORMATS
            )
        defaulted = copy.deepcopy(dict(obj))
        _prune_nulls_and_default(defaulted, schema)
        found = {
            f"{where}: {path or '(root)'}: {what} ({crd.origin} CRD)"
            for error in self._validators[key].iter_errors(defaulted)
            for path, what in _messages(error)
        }
        return sorted(found)
