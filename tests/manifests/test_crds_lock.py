"""manifests/crds.lock pins the versions of versions.env, and scripts/fetch-crds.sh fetches and
checks exactly the files it names, by sha256."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from manifests.crd_schema import (
    ENV_DIR,
    CrdError,
    locate_crds,
    read_lock,
    require_crds_dir,
)

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "fetch-crds.sh"
VERSIONS = REPO / "versions.env"
RAW_GITHUB = "https://raw.githubusercontent.com"


def _versions() -> dict[str, str]:
    lines = VERSIONS.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def _fetch(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **env},
    )


def test_the_lock_names_each_file_once_with_its_sha256():
    entries = read_lock()
    assert {e.project for e in entries} == {
        "kserve",
        "prometheus-operator",
        "katib",
        "knative-eventing",
        "kfp",
    }
    assert len({(e.folder, e.file) for e in entries}) == len(entries)
    for e in entries:
        assert re.fullmatch(r"[0-9a-f]{64}", e.sha256), e
        assert e.file.endswith(".yaml"), e
    for project in {e.project for e in entries}:
        sources = {
            (e.version, e.repository, e.tag, e.path) for e in entries if e.project == project
        }
        assert len(sources) == 1, f"{project}: one release a project, got {sources}"


def test_the_lock_pins_the_versions_of_versions_env():
    versions = _versions()
    for e in read_lock():
        variable = e.project.upper().replace("-", "_") + "_VERSION"
        assert versions.get(variable) == e.version, f"versions.env {variable} vs {e}"
        assert e.tag.removeprefix("knative-") == e.version, e  # Knative tags knative-vX.Y.Z


def test_the_crd_folder_the_tests_read_matches_the_lock():
    result = _fetch("--check", str(require_crds_dir()))
    assert result.returncode == 0, result.stderr
    assert f"matches manifests/crds.lock ({len(read_lock())} files)" in result.stderr


def test_check_fails_on_a_changed_a_missing_and_an_unlocked_file(tmp_path):
    source = require_crds_dir()
    crds = tmp_path / "crds"
    for e in read_lock():
        (crds / e.folder).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / e.folder / e.file, crds / e.folder / e.file)
    changed = crds / "kserve-v0.20.0" / "serving.kserve.io_inferenceservices.yaml"
    changed.write_text(changed.read_text() + "# edited\n")
    (crds / "katib-v0.19.0" / "trial.yaml").unlink()
    (crds / "kfp-2.17.0" / "extra.yaml").write_text("{}\n")

    result = _fetch("--check", str(crds))
    assert result.returncode == 1
    [locked] = [e for e in read_lock() if e.file == changed.name]
    assert f"kserve-v0.20.0/{changed.name}: the lock says {locked.sha256}" in result.stderr
    assert "  katib-v0.19.0/trial.yaml: missing\n" in result.stderr
    assert "kfp-2.17.0/extra.yaml: not in manifests/crds.lock" in result.stderr
    assert f"error: {crds} does not match manifests/crds.lock" in result.stderr


def _fake_raw_github(tmp_path: Path) -> Path:
    """A FAKE of raw.githubusercontent.com (no internet here): each locked file at its URL path."""
    source = require_crds_dir()
    root = tmp_path / "raw-github"
    for e in read_lock():
        target = root / e.url.removeprefix(f"{RAW_GITHUB}/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / e.folder / e.file, target)
    return root


def test_fetch_downloads_every_locked_file_by_tag_and_verifies_it(tmp_path):
    mirror = _fake_raw_github(tmp_path)
    dest = tmp_path / "dest"
    result = _fetch(CRDS_BASE_URL=mirror.as_uri(), CRDS_DEST=str(dest))
    assert result.returncode == 0, result.stderr
    source = require_crds_dir()
    for e in read_lock():
        assert f"fetching {e.url.replace(RAW_GITHUB, mirror.as_uri())}\n" in result.stderr
        assert (dest / e.folder / e.file).read_bytes() == (source / e.folder / e.file).read_bytes()


def test_fetch_fails_loudly_and_writes_nothing_on_a_sha256_mismatch(tmp_path):
    mirror = _fake_raw_github(tmp_path)
    [moved] = [e for e in read_lock() if e.file == "monitoring.coreos.com_servicemonitors.yaml"]
    tampered = mirror / moved.url.removeprefix(f"{RAW_GITHUB}/")
    tampered.write_text(tampered.read_text().replace("honorLabels", "honourLabels"))
    dest = tmp_path / "dest"
    result = _fetch(CRDS_BASE_URL=mirror.as_uri(), CRDS_DEST=str(dest))
    assert result.returncode == 1
    assert f"{moved.folder}/{moved.file}: the lock says {moved.sha256}" in result.stderr
    assert f"nothing was written to {dest}" in result.stderr
    assert not dest.exists()


def test_the_crd_folder_comes_from_the_environment_first(tmp_path):
    assert locate_crds({ENV_DIR: str(tmp_path)}) == tmp_path
    with pytest.raises(CrdError, match="is not a folder"):
        locate_crds({ENV_DIR: str(tmp_path / "missing")})


def test_without_crds_the_tests_skip_except_under_ci(tmp_path, monkeypatch):
    monkeypatch.setattr("manifests.crd_schema.CRD_DIRS", (tmp_path / "shared", tmp_path / ".crds"))
    with pytest.raises(pytest.skip.Exception, match=r"run scripts/fetch-crds\.sh"):
        require_crds_dir({})
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        require_crds_dir({"CI": "true"})
    (tmp_path / ".crds").mkdir()
    assert require_crds_dir({"CI": "true"}) == (tmp_path / ".crds").resolve()
