"""checkov finds no failed check in the rendered manifests; every skip carries a reason.

checkov runs from its own virtual environment (``scripts/tools-venv.sh`` makes
``.tools/checkov``): its pins would downgrade packages the project needs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
SKIP_ANNOTATION = re.compile(r"^checkov\.io/skip\d+$")


def _checkov() -> str:
    for candidate in (
        os.environ.get("CHECKOV"),
        str(REPO_ROOT / ".tools/checkov/bin/checkov"),
        shutil.which("checkov"),
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.skip("checkov is not installed: run scripts/tools-venv.sh (it makes .tools/checkov)")


def test_checkov_finds_no_failed_check(rendered, tmp_path):
    checkov = _checkov()
    files = []
    for target, docs in rendered.items():
        path = tmp_path / (target.replace("/", "-") + ".yaml")
        path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        files += ["-f", str(path)]
    result = subprocess.run(
        [
            checkov,
            *files,
            "--framework",
            "kubernetes",
            "--output",
            "json",
            "--quiet",
            "--compact",
            "--skip-download",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    reports = json.loads(result.stdout or "[]")
    reports = reports if isinstance(reports, list) else [reports]
    failed = [
        f"{c['check_id']} {c['check_name']}: {c['resource']}"
        for r in reports
        for c in (r.get("results") or {}).get("failed_checks", [])
    ]
    passed = sum((r.get("summary") or {}).get("passed", 0) for r in reports)
    assert passed > 100, f"checkov checked nothing: {result.stderr[-2000:]}"
    assert not failed, "checkov failed checks:\n" + "\n".join(failed)


def test_every_checkov_skip_gives_a_reason(rendered):
    skips = 0
    for target, docs in rendered.items():
        for doc in docs:
            for key, value in ((doc["metadata"].get("annotations")) or {}).items():
                if SKIP_ANNOTATION.match(key):
                    skips += 1
                    check, _, reason = value.partition("=")
                    assert re.fullmatch(r"CKV2?_K8S_\d+", check), f"{target}: {key}: {value}"
                    assert len(reason.split()) >= 5, (
                        f"{target}: {key} skips {check} without a reason"
                    )
    assert skips > 0
