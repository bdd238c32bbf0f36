"""Prometheus checks of the kind e2e, through Prometheus's HTTP API.

scripts/kind/e2e.sh runs them against kube-prometheus-stack's Prometheus (port-forwarded):

``scraped``
    waits until ``garbage_predictions_total{model_name="garbage-classifier"}`` has a sample that
    came from a target of the PodMonitor ``garbage-monitoring/garbage-predictor`` whose pod is in
    ``garbage-serving`` (the series' job and instance equal that target's);
``rules``
    waits until predictions are counted at a non-zero rate, the rule group
    ``garbage-classifier.alerts`` is loaded with every rule's health "ok", and GarbageNoTraffic is
    inactive (its condition false: traffic reaches the model server).

    python e2e_prometheus.py scraped|rules --url http://127.0.0.1:9090 [--timeout SECONDS]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from garbage.core.names import MODEL_NAME

COUNTER = f'garbage_predictions_total{{model_name="{MODEL_NAME}"}}'
RATE = f"sum(rate({COUNTER}[15m])) > 0"
POD_MONITOR = ("garbage-monitoring", "garbage-predictor")
PREDICTOR_NAMESPACE = "garbage-serving"
ALERT_GROUP = "garbage-classifier.alerts"
NO_TRAFFIC_ALERT = "GarbageNoTraffic"


class CheckFailed(Exception):
    """What Prometheus shows is not (yet) what a working stack shows; the message says what."""


def get(url: str, path: str, params: dict[str, str] | None = None) -> Any:
    """``GET url/path?params`` of the Prometheus API: the ``data`` of a successful answer."""
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}{path}{query}", timeout=30) as response:
            body = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise CheckFailed(f"Prometheus at {url} did not answer {path}: {error}") from error
    if body.get("status") != "success":
        raise CheckFailed(f"Prometheus {path} failed: {body.get('error', body)}")
    return body["data"]


def pod_monitor_targets(targets: dict[str, Any]) -> list[dict[str, Any]]:
    """The healthy active targets of the predictor's PodMonitor, on predictor pods."""
    namespace, name = POD_MONITOR
    pool_prefix = f"podMonitor/{namespace}/{name}/"
    ours = [t for t in targets.get("activeTargets", []) if t["scrapePool"].startswith(pool_prefix)]
    if not ours:
        pools = sorted({t["scrapePool"] for t in targets.get("activeTargets", [])})
        raise CheckFailed(
            f"no scrape pool {pool_prefix}*: is the PodMonitor applied? pools: {pools}"
        )
    on_predictor = [
        t
        for t in ours
        if t["discoveredLabels"].get("__meta_kubernetes_namespace") == PREDICTOR_NAMESPACE
    ]
    healthy = [t for t in on_predictor if t["health"] == "up"]
    if not healthy:
        states = [(t["labels"].get("pod"), t["health"], t.get("lastError")) for t in ours]
        raise CheckFailed(f"no healthy {pool_prefix}* target in {PREDICTOR_NAMESPACE}: {states}")
    return healthy


def check_scraped(targets: dict[str, Any], series: dict[str, Any]) -> str:
    """The counter has a sample from a PodMonitor target; returns a line that says which."""
    healthy = pod_monitor_targets(targets)
    sources = {(t["labels"].get("job"), t["labels"].get("instance")) for t in healthy}
    results = series.get("result", [])
    for result in results:
        metric = result["metric"]
        if (metric.get("job"), metric.get("instance")) in sources:
            return f"{COUNTER} = {result['value'][1]} from pod {metric.get('pod', '?')}"
    raise CheckFailed(
        f"{COUNTER} has no sample from the PodMonitor's targets {sorted(map(str, sources))}"
        f" (series: {[r['metric'] for r in results]}): has the model answered a request yet?"
    )


def check_rules(rate: dict[str, Any], rules: dict[str, Any]) -> str:
    """Traffic is counted, the alert group is healthy and GarbageNoTraffic is inactive."""
    if not rate.get("result"):
        raise CheckFailed(f"{RATE} is empty: no prediction counted in the last 15 minutes")
    groups = {g["name"]: g for g in rules.get("groups", [])}
    if ALERT_GROUP not in groups:
        raise CheckFailed(f"rule group {ALERT_GROUP} is not loaded (groups: {sorted(groups)})")
    group = groups[ALERT_GROUP]
    unhealthy = [(r["name"], r["health"], r.get("lastError")) for r in group["rules"]]
    unhealthy = [u for u in unhealthy if u[1] != "ok"]
    if unhealthy:
        raise CheckFailed(f"rules of {ALERT_GROUP} not evaluated as ok: {unhealthy}")
    alerts = {r["name"]: r for r in group["rules"] if r.get("type") == "alerting"}
    if NO_TRAFFIC_ALERT not in alerts:
        raise CheckFailed(f"{ALERT_GROUP} has no alert {NO_TRAFFIC_ALERT}: {sorted(alerts)}")
    state = alerts[NO_TRAFFIC_ALERT]["state"]
    if state != "inactive":
        raise CheckFailed(f"{NO_TRAFFIC_ALERT} is {state} although predictions are counted")
    return f"{ALERT_GROUP}: {len(group['rules'])} rules ok; {NO_TRAFFIC_ALERT} inactive"


def scraped(url: str) -> str:
    """One attempt of the ``scraped`` check."""
    targets = get(url, "/api/v1/targets", {"state": "active"})
    return check_scraped(targets, get(url, "/api/v1/query", {"query": COUNTER}))


def rules(url: str) -> str:
    """One attempt of the ``rules`` check."""
    rate = get(url, "/api/v1/query", {"query": RATE})
    return check_rules(rate, get(url, "/api/v1/rules"))


def wait(check: Callable[[], str], timeout: float, interval: float) -> str:
    """``check()`` until it passes or ``timeout`` seconds pass (then its last failure)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except CheckFailed:
            if time.monotonic() + interval > deadline:
                raise
            time.sleep(interval)


def main(argv: list[str] | None = None) -> int:
    """Run one check until it passes; exit 1 with the last reason when it does not."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("check", choices=["scraped", "rules"])
    parser.add_argument("--url", required=True, help="Prometheus, e.g. http://127.0.0.1:9090")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to keep trying")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between attempts")
    args = parser.parse_args(argv)
    check = scraped if args.check == "scraped" else rules
    try:
        print(f"e2e prometheus: {wait(lambda: check(args.url), args.timeout, args.interval)}")
    except CheckFailed as error:
        print(
            f"e2e prometheus: {args.check} failed after {args.timeout:.0f} s: {error}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
