"""mkdocs hook: serve the figures of the generated results (``results/``, beside ``docs/``)
at ``results/...`` in the site, so a page in ``docs/experiments/`` embeds
``../results/fig1/fig1.png`` without the results living in ``docs/``. Tables and summaries
are included with ``pymdownx.snippets`` (``--8<-- "results/..."``) instead."""

from __future__ import annotations

import sys
from pathlib import Path

from mkdocs.structure.files import File, Files

FIGURES = (".png", ".svg")


def on_files(files: Files, config) -> Files:
    root = Path(config["config_file_path"]).parent
    for path in sorted((root / "results").rglob("*")):
        if path.suffix in FIGURES:
            files.append(
                File(
                    str(path.relative_to(root)),
                    src_dir=str(root),
                    dest_dir=config["site_dir"],
                    use_directory_urls=config["use_directory_urls"],
                )
            )
    return files


def on_config(config):
    """The Experiments section of the navigation: the registered experiments' pages, in
    their ``ORDER`` (a page shared by several experiments once)."""
    root = Path(config["config_file_path"]).parent
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from experiments import registry

    pages = list(dict.fromkeys(e.page for e in registry.experiments()))
    for item in config["nav"]:
        if isinstance(item, dict) and "Experiments" in item:
            item["Experiments"] = pages
            return config
    raise ValueError("mkdocs.yml's nav has no 'Experiments' section for the registry's pages.")
