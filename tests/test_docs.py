"""The documentation's Python examples run: README.md and the docs pages in DOCUMENTS.

Each file's ```python blocks are executed in order in one namespace (later blocks use
names defined by earlier ones), so an API change that breaks an example fails here.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = (
    "README.md",
    "docs/quickstart.md",
    "docs/hyper.md",
    "docs/mnist.md",
    "docs/extending.md",
)
_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


def python_blocks(text: str) -> list[str]:
    """The contents of the ```python fenced blocks of a markdown text, in order."""
    return [m.group(1) for m in _BLOCK.finditer(text)]


def test_python_blocks_extraction():
    text = "a\n```python\nx = 1\n```\n```bash\nmake\n```\n```python\ny = x\n```\n"
    assert python_blocks(text) == ["x = 1\n", "y = x\n"]


@pytest.mark.parametrize("document", DOCUMENTS)
def test_examples_run(document):
    path = ROOT / document
    blocks = python_blocks(path.read_text())
    assert blocks, f"{document} has no ```python examples"
    # a real module, so that classes defined by the examples (dataclasses) find it
    module = types.ModuleType(f"docs_example_{path.stem}")
    sys.modules[module.__name__] = module
    try:
        for i, block in enumerate(blocks):
            code = compile(block, f"{document} [python block {i + 1}]", "exec")
            exec(code, module.__dict__)
    finally:
        del sys.modules[module.__name__]


def test_extending_examples_are_short_and_state_their_claims():
    """Each example of "Extending l2l_jax" is at most 20 lines and asserts what it shows;
    a gradient estimator (``def gradient(``), a protocol of two methods with its settings
    that the example then meta-trains, may take 30."""
    text = (ROOT / "docs/extending.md").read_text()
    blocks = python_blocks(text)
    assert len(blocks) == text.count("\n## ")  # one example per section
    for block in blocks:
        limit = 30 if "def gradient(" in block else 20
        assert len(block.splitlines()) <= limit
        assert "assert " in block


@pytest.mark.parametrize("document", DOCUMENTS)
def test_examples_check_their_output(document):
    """Every example block that computes something states what it should be: it asserts,
    or it only defines what a later block of the page asserts on."""
    blocks = python_blocks((ROOT / document).read_text())
    assert any("assert " in b for b in blocks), f"{document}: no example checks a result"
    for block in [b for b in blocks if "print(" in b]:
        assert "assert " in block, f"{document}: an example prints without asserting:\n{block}"


# -- README: one screen, opening with the two commands a newcomer runs ----------------------
README = ROOT / "README.md"
_FENCE = re.compile(r"^```(\w*)[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_readme_fits_on_one_screen():
    size = len(README.read_bytes())
    assert size <= 4096, f"README.md is {size} bytes; results belong in docs/results.md"


def test_readme_opens_with_make_run_and_make_test():
    """The README's first code block is its first commands: `make run`, then `make test`."""
    first = _FENCE.search(README.read_text())
    assert first is not None and first.group(1) == "bash", "README's first block is not bash"
    commands = [line.split("#")[0].strip() for line in first.group(2).splitlines()]
    commands = [c for c in commands if c]
    assert commands[:2] == ["make run", "make test"], commands


def test_readme_links_stay_in_the_repository_and_resolve():
    for target in _LINK.findall(README.read_text()):
        if "://" in target:
            continue
        path = (ROOT / target.split("#")[0]).resolve()
        assert path.is_relative_to(ROOT), f"README links outside the repository: {target}"
        assert path.exists(), f"README links to a missing file: {target}"


def test_readme_holds_no_dates_or_run_logs():
    text = README.read_text()
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", text), "a date in README.md"
    assert "../" not in text, "a path outside the repository in README.md"
