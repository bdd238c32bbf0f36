"""scripts/kind/e2e_prometheus.py, the kind e2e's Prometheus checks, against a real Prometheus.

A real Prometheus (Debian's binary) scrapes the real model server and evaluates the project's own
rule groups (manifests/monitoring/prometheus-rules.yaml). Its one scrape job is named like the
scrape pool the Prometheus Operator makes of the PodMonitor, and carries the namespace label that
Kubernetes discovery would: the rest is what the e2e sees on kind. A few failure messages are
checked on hand-written API answers (a fake Prometheus: states a live one reaches only after
minutes).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest
import yaml
from support import REPO_ROOT, free_port, jpeg_bytes

from garbage.core.names import MODEL_NAME
from garbage.core.protocol import v1_request

RULES = REPO_ROOT / "manifests/monitoring/prometheus-rules.yaml"
POD = "garbage-classifier-predictor-7d9f-abcde"


@pytest.fixture(scope="module")
def prometheus(model_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip(
            "no prometheus binary (Debian package prometheus: scripts/ci-system-packages.sh)"
        )
    work = tmp_path_factory.mktemp("prometheus")
    rules = yaml.safe_load(RULES.read_text())
    (work / "rules.yaml").write_text(yaml.safe_dump({"groups": rules["spec"]["groups"]}))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(work / "rules.yaml")],
        "scrape_configs": [
            {
                "job_name": "podMonitor/garbage-monitoring/garbage-predictor/0",
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{model_server.http_port}"],
                        "labels": {"__meta_kubernetes_namespace": "garbage-serving", "pod": POD},
                    }
                ],
            }
        ],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = work / "prometheus.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={work / 'prometheus.yml'}",
                f"--storage.tsdb.path={work / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            assert process.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def _predict(server, count: int) -> None:
    images = [jpeg_bytes((60, 160, 90), seed=i) for i in range(count)]
    response = httpx.post(
        f"{server.base}/v1/models/{MODEL_NAME}:predict", json=v1_request(images), timeout=60
    )
    assert response.status_code == 200, response.text


@pytest.mark.integration
def test_the_checks_follow_the_traffic(model_server, prometheus: str, e2e_prometheus, capsys):
    check = e2e_prometheus
    check.wait(
        lambda: str(check.pod_monitor_targets(check.get(prometheus, "/api/v1/targets"))), 30, 0.5
    )
    # Before any prediction: no counter yet, and no rate for GarbageNoTraffic to go quiet on.
    with pytest.raises(check.CheckFailed, match="has the model answered a request yet"):
        check.scraped(prometheus)
    with pytest.raises(check.CheckFailed, match="no prediction counted"):
        check.rules(prometheus)

    _predict(model_server, 2)
    assert check.main(["scraped", f"--url={prometheus}", "--timeout=30", "--interval=0.5"]) == 0
    assert f"from pod {POD}" in capsys.readouterr().out
    _predict(model_server, 2)  # the counter grows between two scrapes: a non-zero rate
    assert check.main(["rules", f"--url={prometheus}", "--timeout=60", "--interval=0.5"]) == 0
    assert "GarbageNoTraffic inactive" in capsys.readouterr().out


def test_an_unreachable_prometheus_fails_the_check(e2e_prometheus, capsys):
    assert e2e_prometheus.main(["scraped", "--url=http://127.0.0.1:1", "--timeout=0"]) == 1
    assert "did not answer" in capsys.readouterr().err


def _target(pool: str, namespace: str, health: str = "up") -> dict:
    return {
        "scrapePool": pool,
        "health": health,
        "discoveredLabels": {"__meta_kubernetes_namespace": namespace},
        "labels": {"job": "j", "instance": "i", "pod": POD},
    }


def test_the_messages_say_what_is_missing(e2e_prometheus):
    check = e2e_prometheus
    pool = "podMonitor/garbage-monitoring/garbage-predictor/0"
    with pytest.raises(check.CheckFailed, match="is the PodMonitor applied"):
        check.pod_monitor_targets({"activeTargets": [_target("serviceMonitor/x/y/0", "x")]})
    with pytest.raises(check.CheckFailed, match="no healthy"):
        check.pod_monitor_targets({"activeTargets": [_target(pool, "garbage-serving", "down")]})
    with pytest.raises(check.CheckFailed, match="no healthy"):
        check.pod_monitor_targets({"activeTargets": [_target(pool, "elsewhere")]})
    rate = {"result": [{"metric": {}, "value": [0, "1"]}]}

    def group(state: str, health: str = "ok") -> dict:
        rule = {"name": "GarbageNoTraffic", "type": "alerting", "health": health, "state": state}
        return {"groups": [{"name": "garbage-classifier.alerts", "rules": [rule]}]}

    assert "inactive" in check.check_rules(rate, group("inactive"))
    with pytest.raises(check.CheckFailed, match="is firing although"):
        check.check_rules(rate, group("firing"))
    with pytest.raises(check.CheckFailed, match="not evaluated as ok"):
        check.check_rules(rate, group("inactive", health="err"))
    with pytest.raises(check.CheckFailed, match="is not loaded"):
        check.check_rules(rate, {"groups": []})
