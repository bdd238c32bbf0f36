"""The generated reference pages of the documentation site (docs/_hooks/generate.py).

The pages come from the code, so they must cover all of it: every configuration key, every CLI
command, every public module; and the READMEs shown on the site keep working links.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from pydantic import BaseModel
from support import REPO_ROOT


@pytest.fixture(scope="module")
def generate() -> ModuleType:
    path = REPO_ROOT / "docs" / "_hooks" / "generate.py"
    spec = importlib.util.spec_from_file_location("docs_hooks_generate", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _leaf_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += _leaf_keys(annotation, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def test_config_reference_documents_every_key_with_its_default(generate):
    from garbage.core.config import Config

    page = generate.config_reference()
    keys = _leaf_keys(Config)
    assert "train.augment.hflip" in keys and "registry.min_improvement" in keys
    for key in keys:
        assert f"| `{key}` |" in page, f"{key} is missing from the configuration reference"
    assert "| `train.epochs` | integer | `8` | >= 1 |" in page
    assert "| `registry.gate_metric` | `macro_f1` \\| `accuracy` |" in page
    for profile in ("default", "gpu", "smoke"):
        assert f"### `{profile}`" in page


def test_cli_reference_documents_every_command(generate):
    import typer.main

    from cli.app import app

    def names(command, prefix: str) -> list[str]:
        found = [prefix]
        for name, sub in getattr(command, "commands", {}).items():
            found += names(sub, f"{prefix} {name}")
        return found

    page = generate.cli_reference()
    commands = names(typer.main.get_command(app), "garbage")
    assert {"garbage serve", "garbage pipeline submit", "garbage drift"} <= set(commands)
    for command in commands[1:]:
        assert f"`{command}`" in page, f"{command} is missing from the CLI reference"


def test_api_reference_has_a_section_per_public_module(generate):
    for package in generate.PACKAGES:
        page = generate.api_reference(package)
        modules = [
            ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
            for path in (REPO_ROOT / package).rglob("*.py")
            if not path.name.startswith("_")
        ]
        assert modules
        for module in modules:
            assert f"::: {module}\n" in page, f"{module} is missing from the API reference"


def test_included_readmes_keep_working_links(generate):
    page = generate.included_page("monitoring/README.md", "operations/monitoring.md")
    assert "(../runbooks/GarbageDataDrift.md)" in page
    assert "../docs/runbooks" not in page
    assert page.startswith("# Monitoring\n")

    text = "[a](../serving/README.md#metrics) [b](https://example.org) [c](../bench/x.py)"
    rewritten = generate._rewrite_links(text, "monitoring/README.md", "operations/monitoring.md")
    assert rewritten == "[a](../operations/serving.md#metrics) [b](https://example.org) `c`"


def test_runbooks_are_all_in_the_navigation():
    import yaml

    config = yaml.safe_load((REPO_ROOT / "mkdocs.yml").read_text())
    runbooks = next(section["Runbooks"] for section in config["nav"] if "Runbooks" in section)
    listed = {Path(next(iter(entry.values()))).name for entry in runbooks}
    on_disk = {p.name for p in (REPO_ROOT / "docs" / "runbooks").glob("*.md")}
    assert listed == on_disk
