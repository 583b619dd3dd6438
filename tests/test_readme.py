"""README's code examples run as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_transforms_snippet_runs_and_learns(capsys):
    snippet = next(b for b in python_blocks() if "transforms.clip_per_layer" in b)
    namespace: dict = {}
    exec(compile(snippet, str(README), "exec"), namespace)
    learned = namespace["params"]["w"]
    assert [round(float(w)) for w in learned] == [1, 2, 3, 4, 5]
    assert "layer_norms" in snippet and capsys.readouterr().out
