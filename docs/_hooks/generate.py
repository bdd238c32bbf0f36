"""MkDocs hook: pages generated from the code and from the READMEs at build time.

* ``reference/cli.md``: the ``garbage`` command line, from the typer application.
* ``reference/config.md`` and ``reference/config.schema.json``: the configuration schema, from
  the pydantic model ``garbage.core.config.Config`` (types, defaults, bounds, descriptions) and the
  profiles in ``garbage/core/configs/``.
* ``reference/api/<package>.md``: one mkdocstrings section per module of each package, so a new
  module appears in the API reference without editing the site.
* ``operations/*.md`` and ``contributing.md``: the READMEs of ``serving/``, ``monitoring/``,
  ``manifests/`` and ``CONTRIBUTING.md``, with links rewritten for the site. The READMEs stay the
  one source; the site never copies them into ``docs/``.

Nothing here reaches the network: the build runs offline.
"""

from __future__ import annotations

import json
import pkgutil
import re
from importlib import import_module
from pathlib import Path, PurePosixPath
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("garbage", "components", "pipelines", "serving", "monitoring", "cli")
PACKAGE_TITLES = {
    "garbage": "The ML library: the light core (config, preprocessing, the ONNX classifier, the "
    "wire protocol, model URIs), the training side (data, model, training, evaluation, export, "
    "registry) and the KServe deploy client.",
    "components": "The pipeline's Kubeflow Pipelines components, one per step.",
    "pipelines": "The pipeline definition, compilation, the local runner, cluster submission.",
    "serving": "The KServe model server.",
    "monitoring": "Payload logging, collector, features, drift detection, metrics.",
    "cli": "The `garbage` command line: where the packages are wired together.",
}
# Repository file -> page of the site that shows it.
INCLUDED = {
    "serving/README.md": "operations/serving.md",
    "monitoring/README.md": "operations/monitoring.md",
    "manifests/README.md": "operations/kubernetes.md",
    "CONTRIBUTING.md": "contributing.md",
}
LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)")


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add the generated pages to the site's files (MkDocs event)."""
    pages = {
        "reference/cli.md": cli_reference(),
        "reference/config.md": config_reference(),
        "reference/config.schema.json": json.dumps(config_schema(), indent=2) + "\n",
    }
    for package in PACKAGES:
        pages[f"reference/api/{package}.md"] = api_reference(package)
    for source, page in INCLUDED.items():
        pages[page] = included_page(source, page)
    for uri, content in pages.items():
        files.append(File.generated(config, uri, content=content))
    return files


def cli_reference() -> str:
    """Markdown for every command of the ``garbage`` CLI, from the typer app."""
    import typer
    import typer.main
    from typer.cli import get_docs_for_click

    from cli.app import app

    command = typer.main.get_command(app)
    docs = get_docs_for_click(
        obj=command, ctx=typer.Context(command), name="garbage", title="Command line: garbage"
    )
    intro = (
        "Generated at build time from the typer application `cli.app:app` "
        "(entry point `garbage`). Every command also answers `--help`.\n\n"
    )
    title, _, rest = docs.partition("\n")
    return f"{title}\n\n{intro}{rest.lstrip()}"


def config_schema() -> dict[str, Any]:
    """The JSON schema of :class:`garbage.core.config.Config`."""
    from garbage.core.config import Config

    return Config.model_json_schema()


def _type_of(prop: dict[str, Any], defs: dict[str, Any]) -> str:
    if "$ref" in prop:
        return prop["$ref"].rsplit("/", 1)[-1]
    if "enum" in prop:
        return " \\| ".join(f"`{v}`" for v in prop["enum"])
    if "anyOf" in prop:
        return " \\| ".join(_type_of(p, defs) for p in prop["anyOf"])
    kind = prop.get("type", "any")
    if kind == "array":
        return f"list of {_type_of(prop.get('items', {}), defs)}"
    return {"string": "text", "integer": "integer", "number": "number", "boolean": "bool"}.get(
        kind, str(kind)
    )


def _bounds(prop: dict[str, Any]) -> str:
    parts = []
    for key, sign in (
        ("minimum", ">="),
        ("exclusiveMinimum", ">"),
        ("maximum", "<="),
        ("exclusiveMaximum", "<"),
        ("minItems", "items >="),
    ):
        for candidate in [prop, *prop.get("anyOf", [])]:
            if key in candidate:
                parts.append(f"{sign} {candidate[key]}")
    return ", ".join(parts)


def _default(key: str, defaults: dict[str, Any]) -> str:
    value: Any = defaults
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return ""
        value = value[part]
    value = json.dumps(value)
    if len(value) > 40:
        value = value[:37] + "..."
    return f"`{value}`"


def _rows(
    schema: dict[str, Any], defs: dict[str, Any], prefix: str
) -> list[tuple[str, dict[str, Any]]]:
    rows: list[tuple[str, dict[str, Any]]] = []
    for name, prop in schema.get("properties", {}).items():
        key = f"{prefix}{name}"
        if "$ref" in prop:
            rows.extend(_rows(defs[prop["$ref"].rsplit("/", 1)[-1]], defs, f"{key}."))
        else:
            rows.append((key, prop))
    return rows


def config_reference() -> str:
    """Markdown tables of every configuration key, grouped by section."""
    from garbage.core.config import (
        ENV_DATA_SHA256,
        ENV_DATA_SOURCE,
        ENV_TRACKING_URI,
        ENV_WORK_DIR,
        Config,
    )

    schema = config_schema()
    defs = schema.get("$defs", {})
    # The model's own defaults (default factories included), not the profiles' values.
    defaults = Config().model_dump(mode="json")
    lines = [
        "# Configuration reference",
        "",
        "Generated at build time from the pydantic model `garbage.core.config.Config` "
        "([JSON schema](config.schema.json)). A config is validated once, where it enters the "
        "system, and logged with every run. Layers, lowest first: the profile "
        "(`--profile default|gpu|smoke`), a YAML file (`--config my.yaml`), environment "
        "variables, then `--set section.key=value` overrides. Unknown keys are errors.",
        "",
        "| environment variable | sets |",
        "| --- | --- |",
        f"| `{ENV_DATA_SOURCE}` | `data.source` |",
        f"| `{ENV_DATA_SHA256}` | `data.sha256` |",
        f"| `{ENV_WORK_DIR}` | `work_dir` |",
        f"| `{ENV_TRACKING_URI}` | the MLflow tracking URI (over `registry.tracking_uri`) |",
        "",
    ]
    sections: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for key, prop in _rows(schema, defs, ""):
        sections.setdefault(key.split(".")[0] if "." in key else "(top level)", []).append(
            (key, prop)
        )
    for section, rows in sections.items():
        ref = schema["properties"].get(section, {}).get("$ref", "")
        doc = defs.get(ref.rsplit("/", 1)[-1], {}).get("description", "") if ref else ""
        lines += [f"## `{section}`" if section != "(top level)" else "## Top level", ""]
        if doc:
            lines += [doc, ""]
        lines += [
            "| key | type | default | bounds | description |",
            "| --- | --- | --- | --- | --- |",
        ]
        for key, prop in rows:
            description = prop.get("description", "").replace("|", "\\|")
            lines.append(
                f"| `{key}` | {_type_of(prop, defs)} | {_default(key, defaults)} | {_bounds(prop)} "
                f"| {description} |"
            )
        lines.append("")
    lines += [
        "## Profiles",
        "",
        "Shipped in `garbage/core/configs/`; `--profile NAME` picks one.",
        "",
    ]
    for profile in sorted((ROOT / "garbage" / "core" / "configs").glob("*.yaml")):
        lines += [f"### `{profile.stem}`", "", "```yaml", profile.read_text().rstrip(), "```", ""]
    return "\n".join(lines)


def _modules(package: str) -> list[str]:
    module = import_module(package)
    names = [package]
    for info in pkgutil.walk_packages(module.__path__, prefix=f"{package}."):
        if not info.name.rsplit(".", 1)[-1].startswith("_"):
            names.append(info.name)
    return sorted(names)


def api_reference(package: str) -> str:
    """A page with one mkdocstrings section per public module of ``package``."""
    lines = [
        f"# `{package}`",
        "",
        PACKAGE_TITLES.get(package, ""),
        "",
        "Generated at build time from the docstrings (Google style).",
        "",
    ]
    for name in _modules(package):
        lines += [f"::: {name}", ""]
    return "\n".join(lines)


def _rewrite_links(text: str, source: str, page: str) -> str:
    source_dir = PurePosixPath(source).parent
    page_dir = PurePosixPath(page).parent

    def relative(target: str) -> str:
        depth = len(page_dir.parts)
        return "../" * depth + target

    def replace(match: re.Match[str]) -> str:
        label, target = match.group(1), match.group(2)
        if re.match(r"^[a-z]+://|^#|^mailto:", target):
            return match.group(0)
        path, _, anchor = target.partition("#")
        resolved = _normalise(source_dir / path)
        anchor = f"#{anchor}" if anchor else ""
        if resolved in INCLUDED:
            return f"[{label}]({relative(INCLUDED[resolved])}{anchor})"
        if resolved.startswith("docs/") and (ROOT / resolved).is_file():
            return f"[{label}]({relative(resolved.removeprefix('docs/'))}{anchor})"
        # Any other file of the repository: name it, since the site has no page for it.
        return label if label.startswith("`") else f"`{label}`"

    return LINK.sub(replace, text)


def _normalise(path: PurePosixPath) -> str:
    parts: list[str] = []
    for part in path.parts:
        if part == "..":
            if parts:
                parts.pop()
        elif part != ".":
            parts.append(part)
    return "/".join(parts)


def included_page(source: str, page: str) -> str:
    """The Markdown of the repository file ``source``, its links rewritten for ``page``."""
    text = (ROOT / source).read_text()
    note = (
        f'!!! note "Source"\n    This page is the repository\'s `{source}`, included at build '
        "time: edit that file.\n\n"
    )
    title, _, rest = text.partition("\n")
    if title.startswith("#"):  # the first heading is the page's title, whatever its level
        title = "# " + title.lstrip("#").strip()
    else:  # no title line: keep everything, let MkDocs name the page
        title, rest = "", text
    return f"{title}\n\n{note}{_rewrite_links(rest, source, page)}"
