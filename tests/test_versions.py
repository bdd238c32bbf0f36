"""versions.env, the one list of the cluster stack's versions, and all that must agree with it.

The Python pins (pyproject.toml, the installed distributions, the image locks) must be the SDKs of
the controllers the cluster runs; kind-config.yaml must name the same node image; the kind scripts
and the GitHub workflows must take their versions from the file instead of repeating them.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version
from support import REPO_ROOT

VERSIONS_ENV = REPO_ROOT / "versions.env"
KIND_SCRIPTS = sorted((REPO_ROOT / "scripts/kind").glob("*.sh"))
WORKFLOWS = sorted((REPO_ROOT / ".github/workflows").glob("*.yml"))
SHARED_CRDS = REPO_ROOT.parent / "shared" / "crds"
LINE = re.compile(r"(?P<key>[A-Z][A-Z0-9_]*)=(?P<value>[^\s'\"#$`\\]+)")
VERSION_LITERAL = re.compile(r"(?<![\w.])v?\d+\.\d+(\.\d+)?(?![\w.])")
KIND_NODE_IMAGE = re.compile(r"kindest/node:v(?P<k8s>\d+\.\d+\.\d+)@sha256:[0-9a-f]{64}")


def parse_versions_env(text: str) -> dict[str, str]:
    """KEY=value lines of a versions.env text; comments and blank lines skipped.

    Raises:
        ValueError: a line that bash, GitHub Actions and this parser would not all read the same
            way (quotes, spaces, expansions, inline comments), or a key given twice.
    """
    versions: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        match = LINE.fullmatch(line)
        if match is None:
            raise ValueError(f"versions.env:{number}: {line!r} is not KEY=value (no quotes/spaces)")
        if match["key"] in versions:
            raise ValueError(f"versions.env:{number}: {match['key']} is set twice")
        versions[match["key"]] = match["value"]
    return versions


@pytest.fixture(scope="module")
def versions() -> dict[str, str]:
    return parse_versions_env(VERSIONS_ENV.read_text())


def _dependency(name: str) -> Requirement:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    found = [Requirement(d) for d in project["dependencies"] if Requirement(d).name == name]
    assert len(found) == 1, f"pyproject.toml should list {name} once in [project] dependencies"
    return found[0]


def _lock_pins(path: Path) -> dict[str, str]:
    """``name -> version`` of a lock or requirements file (``name[extras]==version`` lines)."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        requirement = Requirement(line)
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", f"{path}: {line} is not an exact pin"
        pins[requirement.name] = specifier.version
    return pins


def _minor(version: str) -> tuple[int, int]:
    release = Version(version.removeprefix("v")).release
    return release[0], release[1]


def _without_comments(script: str) -> str:
    return "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("#"))


# -- the file itself ------------------------------------------------------------------------------


def test_the_parser_refuses_what_bash_or_github_would_read_differently() -> None:
    assert parse_versions_env("# c\n\nA_VERSION=v1.2.3\nB=x\n") == {"A_VERSION": "v1.2.3", "B": "x"}
    for bad in ['A="v1"', "A=v1 # inline", "A = v1", "a=v1", "A=$B", "A=v1\nA=v2"]:
        with pytest.raises(ValueError):
            parse_versions_env(bad)


def test_versions_env_holds_the_whole_stack(versions: dict[str, str]) -> None:
    assert VERSIONS_ENV.read_text().endswith("\n"), "bash's read loop would drop the last line"
    expected = {
        "KSERVE_VERSION",
        "KSERVE_SDK_VERSION",
        "KFP_VERSION",
        "KFP_SDK_VERSION",
        "CERT_MANAGER_VERSION",
        "GATEWAY_API_VERSION",
        "KNATIVE_OPERATOR_VERSION",
        "KNATIVE_SERVING_VERSION",
        "KNATIVE_EVENTING_VERSION",
        "PROMETHEUS_OPERATOR_VERSION",
        "PROMETHEUS_STACK_VERSION",
        "KATIB_VERSION",
        "KIND_VERSION",
        "KIND_NODE_IMAGE",
        "HELM_VERSION",
        "IMAGE_TAG",
        "MLFLOW_IMAGE_TAG",
    }
    assert expected <= versions.keys(), f"versions.env lacks {sorted(expected - versions.keys())}"
    for key, value in versions.items():
        if key != "KIND_NODE_IMAGE":
            Version(value.removeprefix("v"))  # raises on anything but a version


def test_every_version_a_script_or_workflow_uses_is_in_versions_env(
    versions: dict[str, str],
) -> None:
    used: set[str] = set()
    for path in [*KIND_SCRIPTS, *WORKFLOWS]:
        used |= set(re.findall(r"\b([A-Z][A-Z0-9_]*_VERSION)\b", path.read_text()))
    assert used, "the scripts name no *_VERSION variable: the pattern above is out of date"
    assert used <= versions.keys(), (
        f"used but not in versions.env: {sorted(used - versions.keys())}"
    )


def test_the_pinned_versions_have_their_crds_in_shared(versions: dict[str, str]) -> None:
    if not SHARED_CRDS.is_dir():
        pytest.skip(f"{SHARED_CRDS} is not there (only beside the development checkout)")
    for folder in (
        f"kserve-{versions['KSERVE_VERSION']}",
        f"kfp-{versions['KFP_VERSION']}",
        f"prometheus-operator-{versions['PROMETHEUS_OPERATOR_VERSION']}",
        f"katib-{versions['KATIB_VERSION']}",
        f"knative-eventing-{versions['KNATIVE_EVENTING_VERSION']}",
    ):
        assert (SHARED_CRDS / folder).is_dir(), f"no CRDs of {folder} in {SHARED_CRDS}"


# -- Python pins == cluster pins ----------------------------------------------------------------


def test_kserve_sdk_and_controller_come_from_one_release(versions: dict[str, str]) -> None:
    sdk = versions["KSERVE_SDK_VERSION"]
    assert versions["KSERVE_VERSION"] == f"v{sdk}", (
        "KServe controller and SDK are different releases"
    )
    assert str(_dependency("kserve").specifier) == f"=={sdk}", "pyproject.toml must pin kserve=="
    installed = importlib.metadata.version("kserve")
    assert installed == sdk, f"kserve {installed} is installed: run .venv/bin/pip install -e ."
    for lock in ("serving/requirements.in", "serving/requirements-cpu.txt",
                 "serving/requirements-gpu.txt", "components/requirements.txt"):  # fmt: skip
        pinned = _lock_pins(REPO_ROOT / lock).get("kserve")
        assert pinned == sdk, f"{lock} pins kserve {pinned}: run scripts/lock-requirements.sh"


@pytest.mark.parametrize("name", ["kfp", "kfp-kubernetes"])
def test_kfp_sdk_minor_is_the_backend_minor(versions: dict[str, str], name: str) -> None:
    minor = _minor(versions["KFP_SDK_VERSION"])
    assert _minor(versions["KFP_VERSION"]) == minor, "KFP backend and SDK are different minors"
    specifier = _dependency(name).specifier
    major, sdk_minor = minor
    assert specifier.contains(f"{major}.{sdk_minor}.0")
    assert not specifier.contains(f"{major}.{sdk_minor + 1}.0"), f"{name} allows the next minor"
    assert not specifier.contains(f"{major}.{sdk_minor - 1}.99"), f"{name} allows the last minor"
    assert _minor(importlib.metadata.version(name)) == minor, f"the installed {name} is off minor"
    pinned = _lock_pins(REPO_ROOT / "components/requirements.txt")[name]
    assert _minor(pinned) == minor, f"components/requirements.txt pins {name} {pinned}"


# -- kind -----------------------------------------------------------------------------------------


def test_kind_config_names_the_pinned_node_image(versions: dict[str, str]) -> None:
    image = versions["KIND_NODE_IMAGE"]
    match = KIND_NODE_IMAGE.fullmatch(image)
    assert match, f"KIND_NODE_IMAGE {image} is not kindest/node:vX.Y.Z@sha256:<digest>"
    config = yaml.safe_load((REPO_ROOT / "kind-config.yaml").read_text())
    images = [node.get("image") for node in config["nodes"]]
    assert images == [image] * len(images), f"kind-config.yaml: {images}, versions.env: {image}"
    schemas = ast.parse((REPO_ROOT / "tests/manifests/test_kustomize_schemas.py").read_text())
    (schema_version,) = [
        node.value.value
        for node in ast.walk(schemas)
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "KUBERNETES_VERSION" for t in node.targets)
        and isinstance(node.value, ast.Constant)
    ]
    assert _minor(match["k8s"]) == _minor(schema_version), (
        f"the node runs Kubernetes {match['k8s']}, the manifests are validated against "
        f"{schema_version} (tests/manifests/test_kustomize_schemas.py)"
    )


@pytest.mark.parametrize("script", KIND_SCRIPTS, ids=lambda p: p.name)
def test_the_kind_scripts_hold_no_version_of_their_own(script: Path) -> None:
    found = [m.group(0) for m in VERSION_LITERAL.finditer(_without_comments(script.read_text()))]
    assert not found, f"{script.name} repeats versions {found}: take them from versions.env"


def _lib_sh(variables: list[str], env: dict[str, str]) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if not re.fullmatch(r"[A-Z][A-Z0-9_]*", k)}
    clean.update({"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **env})
    printed = " ".join(f'"${{{v}}}"' for v in variables)
    result = subprocess.run(
        ["bash", "-c", f"set -euo pipefail; source scripts/kind/lib.sh; printf '%s\\n' {printed}"],
        cwd=REPO_ROOT,
        env=clean,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_lib_sh_sets_every_version_from_versions_env(versions: dict[str, str]) -> None:
    keys = sorted(versions)
    assert _lib_sh(keys, {}) == [versions[k] for k in keys]
    tag = versions["MLFLOW_IMAGE_TAG"]
    assert _lib_sh(["MLFLOW_IMAGE"], {}) == [f"ghcr.io/garbage-classifier/mlflow:{tag}"]


def test_an_exported_variable_overrides_versions_env(versions: dict[str, str]) -> None:
    assert _lib_sh(["KSERVE_VERSION", "KFP_VERSION"], {"KSERVE_VERSION": "v9.9.9"}) == [
        "v9.9.9",
        versions["KFP_VERSION"],
    ]


# -- the GitHub workflows -------------------------------------------------------------------------


def _strings(node: object, where: str = "") -> Iterator[tuple[str, str]]:
    """Every string of a parsed YAML document (keys and values) with its path."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield f"{where}.{key}", str(key)
            yield from _strings(value, f"{where}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _strings(value, f"{where}[{index}]")
    elif node is not None:
        yield where, str(node)


def _steps(workflow: dict) -> Iterator[tuple[str, int, dict]]:
    for job_name, job in workflow["jobs"].items():
        for index, step in enumerate(job.get("steps", [])):
            yield job_name, index, step


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_the_workflows_repeat_no_version_of_versions_env(
    versions: dict[str, str], path: Path
) -> None:
    owned = {
        value: key
        for key, value in versions.items()
        if key not in ("KFP_SDK_VERSION",)  # a bare minor ("2.17") says nothing on its own
    }
    found = []
    for where, text in _strings(yaml.safe_load(path.read_text())):
        for value, key in owned.items():
            bare = re.escape(value.removeprefix("v"))
            if re.search(rf"(?<![\w.])v?{bare}(?![\w.])", text):
                found.append(f"{where}: {value} (versions.env {key})")
    assert not found, f"{path.name} repeats versions.env: {found}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_the_workflows_load_versions_env_before_using_it(
    versions: dict[str, str], path: Path, tmp_path: Path
) -> None:
    workflow = yaml.safe_load(path.read_text())
    for job_name, job in workflow["jobs"].items():
        steps = job.get("steps", [])
        loads = [i for i, s in enumerate(steps) if "versions.env" in s.get("run", "")]
        users = [
            i
            for i, step in enumerate(steps)
            if i not in loads
            and any(re.search(rf"\b{k}\b", yaml.safe_dump(step)) for k in versions)
        ]
        if not users:
            continue
        assert loads and loads[0] < min(users), f"{path.name} {job_name}: versions.env comes late"
        github_env = tmp_path / f"{job_name}.env"
        github_env.write_text("")
        result = subprocess.run(
            ["bash", "-e", "-c", steps[loads[0]]["run"]],
            cwd=REPO_ROOT,
            env={**os.environ, "GITHUB_ENV": str(github_env)},
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert parse_versions_env(github_env.read_text()) == versions
