"""The cluster and image scripts are shellcheck-clean (they need Docker and the internet, so they
run in GitHub Actions, not here; shellcheck is the check that can run here)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted([*REPO_ROOT.glob("scripts/*.sh"), *REPO_ROOT.glob("scripts/kind/*.sh")])
SOURCED = {"lib.sh"}


def test_the_scripts_exist_parse_and_are_executable():
    assert len(SCRIPTS) >= 9
    for script in SCRIPTS:
        assert script.is_file(), script
        result = subprocess.run(
            ["bash", "-n", str(script)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, f"{script}: {result.stderr}"
        if script.name not in SOURCED:
            assert os.access(script, os.X_OK), f"{script} is not executable"
            assert script.read_text().startswith("#!/usr/bin/env bash\n"), script
            assert "set -euo pipefail" in script.read_text(), script


def test_the_scripts_are_shellcheck_clean():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (Debian: apt-get install shellcheck)")
    result = subprocess.run(
        [shellcheck, "-x", "--severity=style", *map(str, SCRIPTS)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
