"""The documentation site builds without a warning, shows the API that README promises,
and every ```python example of its pages runs (fragments are ```{code-block} python)."""

import pathlib
import re
import subprocess
import sys

import pytest

from tests import processes
from tests.test_readme import README, python_blocks, run_blocks

DOCS = processes.REPO / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts)
EXAMPLE_PAGES = [p for p in PAGES if python_blocks(p)]

# What the API reference must document (an anchor per object, i.e. with its docstring).
REFERENCE = {
    "fl_dp_asr.dp.transforms": [
        "clip_by_global_norm",
        "clip_per_layer",
        "rescale_per_layer",
        "add_gaussian_noise",
    ],
    "fl_dp_asr.dp.policy": ["DPConfig"],
    "fl_dp_asr.dp.accounting": ["epsilon", "calibrate_noise", "extrapolate", "RunAccountant"],
    "fl_dp_asr.dp.correlated": ["CorrelatedNoise"],
    "fl_dp_asr.dp.canaries": ["Canaries"],
    "fl_dp_asr.fl.round": ["make_round_step", "BoundRoundStep", "init_server_state"],
    "fl_dp_asr.fl.executors": ["Executor", "vectorized", "sharded", "sequential"],
    "fl_dp_asr.fl.samplers": ["FixedSizeSampler", "PoissonSampler", "CyclicSampler"],
    "fl_dp_asr.data.cohorts": ["CohortStream"],
    "fl_dp_asr.models.asr": ["make_loss_fn"],
    "fl_dp_asr.audio.features": ["log_mel"],
    "fl_dp_asr.text.metrics": ["ErrorCounts"],
    "fl_dp_asr.train.checkpoint": ["Checkpointer"],
    "fl_dp_asr.memorization.utterances": ["UtteranceCanarySpec", "make_canaries", "insert"],
    "fl_dp_asr.memorization.measure": [
        "score_utterances",
        "exposure",
        "extrapolated_exposure",
        "membership_auc",
    ],
}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> pathlib.Path:
    """The HTML site, built as `make docs` builds it (warnings are errors)."""
    out = tmp_path_factory.mktemp("docs") / "html"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-b",
            "html",
            "-W",
            "--keep-going",
            "-q",
            str(DOCS),
            str(out),
        ],
        cwd=processes.REPO,
        env=processes.python_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"sphinx-build failed:\n{result.stderr[-4000:]}"
    return out


def test_site_builds_without_warnings(site):
    assert (site / "index.html").is_file()
    for page in PAGES:
        name = page.relative_to(DOCS).with_suffix(".html")
        if page.name != "privacy_table.md":  # included by a guide, not a page of its own
            assert (site / name).is_file(), f"{page} is not in the site"


def test_reference_documents_the_public_api(site):
    for module, names in REFERENCE.items():
        html = (site / "reference" / "generated" / f"{module}.html").read_text(encoding="utf-8")
        for name in names:
            assert f'id="{module}.{name}"' in html, f"{module}.{name} is not documented"


# Pages whose example learns y = x · [1, 2, 3, 4, 5]: where the learned weights are.
LEARNED_WEIGHTS = {
    "tutorials/dp_transforms.md": lambda namespace: namespace["params"]["w"],
    "tutorials/round_step.md": lambda namespace: namespace["state"].params["w"],
}


@pytest.mark.parametrize("page", EXAMPLE_PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_examples_run(page, capsys):
    namespace = run_blocks(python_blocks(page), page)
    assert capsys.readouterr().out, f"{page}'s examples print nothing"
    learned = LEARNED_WEIGHTS.get(str(page.relative_to(DOCS)))
    if learned:
        assert [round(float(w)) for w in learned(namespace)] == [1, 2, 3, 4, 5]


def test_every_learning_example_is_checked():
    assert set(LEARNED_WEIGHTS) <= {str(p.relative_to(DOCS)) for p in EXAMPLE_PAGES}


def test_readme_numbers_have_a_docs_page():
    prose = re.sub(r"```.*?```", "", README.read_text(encoding="utf-8"), flags=re.S)
    docs = "\n".join(p.read_text(encoding="utf-8") for p in PAGES)
    numbers = {n for n in re.findall(r"\d[\d,.]*\d", prose) if len(n) >= 3 or "." in n}
    assert numbers, "README states no number?"
    missing = sorted(n for n in numbers if n not in docs)
    assert not missing, f"numbers in README.md that no page of docs/ states: {missing}"
