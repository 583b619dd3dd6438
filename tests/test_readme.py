"""README's code examples run as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def python_blocks(path: pathlib.Path = README) -> list[str]:
    """The ```python blocks of a Markdown file, in order (other fences are not run)."""
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


def run_blocks(blocks: list[str], path: pathlib.Path) -> dict:
    """Runs ``blocks`` one after another in one namespace (a page reads like a notebook);
    returns the namespace."""
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(path), "exec"), namespace)  # pylint: disable=exec-used
    return namespace


def test_transforms_snippet_runs_and_learns(capsys):
    snippet = next(b for b in python_blocks() if "transforms.clip_per_layer" in b)
    namespace = run_blocks([snippet], README)
    learned = namespace["params"]["w"]
    assert [round(float(w)) for w in learned] == [1, 2, 3, 4, 5]
    assert "layer_norms" in snippet and capsys.readouterr().out
