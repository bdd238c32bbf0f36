"""Strict structural checks of the Prometheus Operator resources the monitoring manifests ship.

A test helper (tests/manifests/conftest.py, tests/monitoring/test_manifests.py), importable as
``manifests.prometheus_operator_schema`` through pytest's ``pythonpath``.

``kubectl`` would accept a misspelt field in a custom resource silently when the CRD is not yet
installed, and the Prometheus Operator ignores unknown fields: a typo such as ``honourLabels``
or ``annotation`` would only show as a missing scrape or a bare alert. These checks know the
fields of ``PrometheusRule`` and ``ServiceMonitor`` (monitoring.coreos.com/v1) that the project
uses or may use, with their types; anything else is reported.
"""

from __future__ import annotations

from typing import Any

API_VERSION = "monitoring.coreos.com/v1"

_STR, _BOOL, _INT = str, bool, int
_LABELS = {"*": _STR}
_SELECTOR = {
    "matchLabels": _LABELS,
    "matchExpressions": [{"key": _STR, "operator": _STR, "values": [_STR]}],
}
_METADATA = {"name": _STR, "namespace": _STR, "labels": _LABELS, "annotations": _LABELS}
_RULE = {
    "record": _STR,
    "alert": _STR,
    "expr": _STR,
    "for": _STR,
    "keep_firing_for": _STR,
    "labels": _LABELS,
    "annotations": _LABELS,
}
_RELABEL = {
    "sourceLabels": [_STR],
    "separator": _STR,
    "targetLabel": _STR,
    "regex": _STR,
    "modulus": _INT,
    "replacement": _STR,
    "action": _STR,
}
_ENDPOINT = {
    "port": _STR,
    "targetPort": (_STR, _INT),
    "path": _STR,
    "scheme": _STR,
    "interval": _STR,
    "scrapeTimeout": _STR,
    "honorLabels": _BOOL,
    "honorTimestamps": _BOOL,
    "params": {"*": [_STR]},
    "relabelings": [_RELABEL],
    "metricRelabelings": [_RELABEL],
}
SCHEMAS: dict[str, dict[str, Any]] = {
    "PrometheusRule": {
        "apiVersion": _STR,
        "kind": _STR,
        "metadata": _METADATA,
        "spec": {
            "groups": [
                {
                    "name": _STR,
                    "interval": _STR,
                    "limit": _INT,
                    "partial_response_strategy": _STR,
                    "rules": [_RULE],
                }
            ]
        },
    },
    "ServiceMonitor": {
        "apiVersion": _STR,
        "kind": _STR,
        "metadata": _METADATA,
        "spec": {
            "selector": _SELECTOR,
            "namespaceSelector": {"any": _BOOL, "matchNames": [_STR]},
            "endpoints": [_ENDPOINT],
            "jobLabel": _STR,
            "targetLabels": [_STR],
            "podTargetLabels": [_STR],
            "sampleLimit": _INT,
        },
    },
}
REQUIRED = {
    "PrometheusRule": [("spec", "groups")],
    "ServiceMonitor": [("spec", "selector"), ("spec", "endpoints")],
}


def _walk(value: Any, schema: Any, path: str, problems: list[str]) -> None:
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping, got {type(value).__name__}")
            return
        for key, item in value.items():
            if key in schema:
                _walk(item, schema[key], f"{path}.{key}", problems)
            elif "*" in schema:
                _walk(item, schema["*"], f"{path}.{key}", problems)
            else:
                problems.append(f"{path}.{key}: unknown field")
        return
    if isinstance(schema, list):
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list, got {type(value).__name__}")
            return
        for i, item in enumerate(value):
            _walk(item, schema[0], f"{path}[{i}]", problems)
        return
    wanted = schema if isinstance(schema, tuple) else (schema,)
    if (isinstance(value, bool) and bool not in wanted) or not isinstance(value, wanted):
        names = "/".join(t.__name__ for t in wanted)
        problems.append(f"{path}: expected {names}, got {type(value).__name__} {value!r}")


def prometheus_operator_problems(doc: dict[str, Any]) -> list[str]:
    """Problems of one ``monitoring.coreos.com/v1`` resource (empty when it is well formed)."""
    kind = doc.get("kind")
    name = (doc.get("metadata") or {}).get("name")
    where = f"{kind}/{name}"
    if doc.get("apiVersion") != API_VERSION or kind not in SCHEMAS:
        return [f"{where}: not a {API_VERSION} PrometheusRule or ServiceMonitor"]
    problems: list[str] = []
    _walk(doc, SCHEMAS[kind], where, problems)
    for path in REQUIRED[kind]:
        node: Any = doc
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if not node:
            problems.append(f"{where}: {'.'.join(path)} is required")
    if kind == "PrometheusRule":
        for g, group in enumerate((doc.get("spec") or {}).get("groups") or []):
            for r, rule in enumerate(group.get("rules") or []):
                if ("alert" in rule) == ("record" in rule):
                    problems.append(
                        f"{where}: groups[{g}].rules[{r}] needs exactly one of alert, record"
                    )
                if "expr" not in rule:
                    problems.append(f"{where}: groups[{g}].rules[{r}] has no expr")
    return problems
