"""Tests of the privacy command line (fl_dp_asr.cli.privacy), mostly through main() in-process."""

import json
import os
import pathlib
import re
import resource
import subprocess
import sys

import pytest

from fl_dp_asr.cli import privacy
from fl_dp_asr.dp import accounting

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAPER_ROWS = ROOT / "experiments" / "paper_extrapolation.csv"
SMALL = ["--cohort", "10", "--population", "1e3", "--rounds", "20", "--delta", "1e-5"]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = privacy.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_epsilon_prints_both_accountants_and_the_assumptions(capsys):
    status, out, err = run(capsys, "epsilon", "--noise-multiplier", "1.0", *SMALL)
    assert status == 0 and err == ""
    assert "Poisson sampling" in out and "add-or-remove-one-user" in out
    expected = accounting.epsilon(1.0, 10, 1000, 20, 1e-5).epsilon
    rdp_line = next(line for line in out.splitlines() if line.startswith("RDP"))
    assert f"{expected:.2f}" in rdp_line
    assert any(line.startswith("PLD") for line in out.splitlines())


def test_epsilon_json_converts_sigma_dp(capsys):
    status, out, _ = run(capsys, "epsilon", "--sigma-dp", "0.1", *SMALL, "--json")
    assert status == 0
    data = json.loads(out)
    assert data["settings"]["noise_multiplier"] == pytest.approx(1.0)  # z = S·σ_DP
    assert data["settings"]["sampling"] == "poisson"
    by_name = {r["accountant"]: r for r in data["results"]}
    assert by_name["rdp"]["epsilon"] == pytest.approx(
        accounting.epsilon(1.0, 10, 1000, 20, 1e-5).epsilon
    )
    assert by_name["pld"]["epsilon"] <= by_name["rdp"]["epsilon"]


def test_adaptive_clipping_prints_the_split_and_keeps_the_epsilon_of_z(capsys):
    status, out, _ = run(
        capsys,
        "epsilon",
        "--noise-multiplier",
        "1.0",
        *SMALL,
        "--json",
        "--accountant",
        "rdp",
        "--clipped-count-stddev",
        "3",
        "--clip-bounds",
        "4",
    )
    assert status == 0
    settings = json.loads(out)["settings"]
    z_delta, z_b = settings["delta_noise_multiplier"], settings["count_noise_multiplier"]
    assert z_b == pytest.approx(3.0)  # 2σ_b/√H
    assert (z_delta**-2 + z_b**-2) ** -0.5 == pytest.approx(1.0)
    assert json.loads(out)["results"][0]["epsilon"] == pytest.approx(
        accounting.epsilon(1.0, 10, 1000, 20, 1e-5).epsilon
    )
    status, text, _ = run(
        capsys,
        "epsilon",
        "--noise-multiplier",
        "1.0",
        *SMALL,
        "--accountant",
        "rdp",
        "--clipped-count-stddev",
        "3",
    )
    assert status == 0 and "z_Δ" in text and "z_b = 2σ_b/√H" in text


def test_adaptive_clipping_with_too_little_count_noise_names_the_flags(capsys):
    status, _, err = run(
        capsys, "epsilon", "--noise-multiplier", "1.0", *SMALL, "--clipped-count-stddev", "0.4"
    )
    assert status == 2
    assert "--clipped-count-stddev 0.4" in err and "must exceed" in err
    assert "raise --clipped-count-stddev" in err and "dp.clipped_count_stddev" not in err
    assert len(err.strip().splitlines()) == 1


def test_clip_bounds_without_count_noise_is_an_error(capsys):
    status, out, err = run(
        capsys, "epsilon", "--noise-multiplier", "1.0", *SMALL, "--clip-bounds", "4"
    )
    assert status == 2 and out == ""
    assert "--clip-bounds needs --clipped-count-stddev" in err


@pytest.mark.parametrize("command", [[], ["epsilon"], ["calibrate"], ["extrapolate"]])
def test_help_is_plain_text(capsys, command):
    with pytest.raises(SystemExit) as exit_info:
        privacy.main([*command, "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "usage:" in out
    assert "``" not in out


def test_epsilon_fixed_sampling_marks_pld_unsupported(capsys):
    status, out, _ = run(
        capsys, "epsilon", "--noise-multiplier", "2", *SMALL, "--sampling", "fixed", "--json"
    )
    assert status == 0
    data = json.loads(out)
    assert data["settings"]["neighboring_relation"] == "replace-one-user"
    pld = next(r for r in data["results"] if r["accountant"] == "pld")
    assert pld == {"accountant": "pld", "supported": False, "epsilon": None, "rdp_order": None}


def test_epsilon_at_tiny_noise_refuses_pld_and_still_prints_rdp(capsys):
    status, out, _ = run(
        capsys,
        "epsilon",
        "--sigma-dp",
        "1e-4",
        "--cohort",
        "16",
        "--population",
        "300",
        "--rounds",
        "20",
    )
    assert status == 0
    assert re.search(r"PLD\s+n/a\s+-\s+refused \(see below\)", out)
    assert re.search(r"RDP\s+\|?\s*[0-9.]+", out)


def test_epsilon_refuses_pld_where_it_would_take_gigabytes(capsys):
    # Regression: z = 0.05 passed the old guard and took 47 s and 2.6 GB.
    status, out, _ = run(
        capsys,
        "epsilon",
        "--noise-multiplier",
        "0.05",
        "--cohort",
        "16",
        "--population",
        "300",
        "--rounds",
        "20",
        "--delta",
        "1e-6",
    )
    assert status == 0
    footnote = out.split("\n\nPLD: ")[1]
    assert "refused at z=0.05, q=0.05333, T=20" in footnote and " GB" in footnote
    assert "Use --accountant rdp" in footnote


def _limited_run(*argv: str) -> subprocess.CompletedProcess:
    """The CLI in a child with 3 GB of address space and a minute: a runaway fails fast."""
    return subprocess.run(
        [sys.executable, "-m", "fl_dp_asr.cli.privacy", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30)),
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
    )


def test_calibrate_with_a_loose_target_refuses_pld_instead_of_eating_memory():
    # Regression: PLD's search ran 14 minutes and grew to 15 GB (RDP: 2.6 s, z = 0.0332).
    result = _limited_run(
        "calibrate",
        "--target-epsilon",
        "1e4",
        "--cohort",
        "16",
        "--population",
        "300",
        "--rounds",
        "20",
        "--delta",
        "1e-6",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rdp_row = next(line for line in result.stdout.splitlines() if line.startswith("RDP"))
    assert rdp_row.split()[1].startswith("0.033")
    assert re.search(r"PLD\s+n/a\s+-\s+-\s+refused \(see below\)", result.stdout)
    footnote = result.stdout.split("\n\nPLD: ")[1]
    assert "the PLD answer is ≤ z=0.03319" in footnote and "Use --accountant rdp" in footnote


def test_calibrate_reaches_the_target(capsys):
    status, out, _ = run(
        capsys, "calibrate", "--target-epsilon", "2", *SMALL, "--accountant", "rdp", "--json"
    )
    assert status == 0
    (result,) = json.loads(out)["results"]
    assert result["epsilon"] <= 2.0
    assert result["sigma_dp"] == pytest.approx(result["noise_multiplier"] / 10)
    status, text, _ = run(
        capsys, "calibrate", "--target-epsilon", "2", *SMALL, "--accountant", "rdp"
    )
    assert status == 0 and f"{result['noise_multiplier']:.5g}" in text


def test_extrapolate_grid_covers_every_combination(capsys):
    status, out, _ = run(
        capsys,
        "extrapolate",
        "--sigma-dp",
        "1e-5",
        "2e-5",
        "--target-cohort",
        "51200",
        "102400",
        "--target-population",
        "6.95e6",
        "--rounds",
        "100",
        "200",
        "--accountant",
        "rdp",
        "--json",
    )
    assert status == 0
    rows = json.loads(out)["rows"]
    assert len(rows) == 2 * 2 * 1 * 2
    first = rows[0]
    assert (first["sigma_dp"], first["target_cohort"], first["rounds"]) == (1e-5, 51200, 100)
    assert first["noise_multiplier"] == pytest.approx(0.512)
    assert first["sampling_rate"] == pytest.approx(51200 / 6.95e6)
    assert first["simulated_noise_multiplier"] == pytest.approx(1024 * 1e-5)
    assert first["epsilon_pld"] is None


def test_extrapolate_sampling_rate_grid_sets_population(capsys):
    status, out, _ = run(
        capsys,
        "extrapolate",
        "--sigma-dp",
        "1e-5",
        "--target-cohort",
        "51200",
        "--target-sampling-rate",
        "0.01",
        "--rounds",
        "10",
        "--accountant",
        "rdp",
        "--json",
    )
    assert status == 0
    assert json.loads(out)["rows"][0]["target_population"] == 5_120_000


def test_extrapolate_rows_file_and_markdown(capsys, tmp_path):
    rows = tmp_path / "rows.csv"
    rows.write_text(
        "# comment\n"
        "label,sigma_dp,target_cohort,target_population,rounds,delta\n"
        "a,1e-5,51200,5.12e6,10,\n"
        "b,2e-5,102400,1.024e7,20,1e-6\n",
        encoding="utf-8",
    )
    status, out, _ = run(capsys, "extrapolate", "--rows", str(rows), "--markdown")
    assert status == 0
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 2  # header + two rows
    assert "ε RDP" in table[0] and "ε PLD" in table[0]
    assert table[1].startswith("| a | 1e-05 | 51,200 | 5,120,000 |")
    assert "| 1e-06 |" in table[2]
    assert "add-or-remove-one-user" in out


def test_paper_rows_file_holds_the_paper_settings():
    rows = privacy.read_rows(str(PAPER_ROWS), default_delta=1e-9, default_simulated_cohort=1024)
    assert {r.sigma_dp for r in rows} == {1e-6, 3e-6, 1e-5, 2e-5}
    assert {r.target_cohort for r in rows} == {51200, 102400, 204800}
    assert all(3_000_000 <= r.target_population <= 700_000_000 for r in rows)
    assert all(2000 <= r.rounds <= 3400 for r in rows)
    assert all(r.target_cohort / r.target_population <= 0.05 for r in rows)
    assert {r.delta for r in rows} == {1e-9}


@pytest.mark.slow
def test_generated_privacy_table_is_up_to_date():
    from experiments import privacy_table

    for path, text in privacy_table.expected_files().items():
        assert (ROOT / path).read_text(encoding="utf-8") == text, (
            f"{path} is stale: run python -m experiments.privacy_table"
        )


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (
            [
                "epsilon",
                "--noise-multiplier",
                "1",
                "--cohort",
                "10",
                "--population",
                "1000.5",
                "--rounds",
                "5",
            ],
            "--population",
        ),
        (
            [
                "epsilon",
                "--noise-multiplier",
                "1",
                "--cohort",
                "10",
                "--population",
                "1e3",
                "--rounds",
                "2.5",
            ],
            "--rounds",
        ),
        (
            [
                "epsilon",
                "--noise-multiplier",
                "1",
                "--cohort",
                "2000",
                "--population",
                "1000",
                "--rounds",
                "5",
            ],
            "epsilon: --cohort (2,000) must not exceed --population (1,000)",
        ),
        (
            [
                "calibrate",
                "--target-epsilon",
                "1",
                "--cohort",
                "100",
                "--population",
                "50",
                "--rounds",
                "5",
            ],
            "calibrate: --cohort (100) must not exceed --population (50)",
        ),
        (
            [
                "epsilon",
                "--noise-multiplier",
                "1",
                "--cohort",
                "10",
                "--population",
                "1e3",
                "--rounds",
                "0",
            ],
            "epsilon: argument --rounds: expected an integer >= 1, got '0'",
        ),
        (
            [
                "epsilon",
                "--noise-multiplier",
                "1",
                "--cohort",
                "0",
                "--population",
                "1e3",
                "--rounds",
                "5",
            ],
            "epsilon: argument --cohort: expected an integer >= 1, got '0'",
        ),
        (
            ["epsilon", "--noise-multiplier", "0", *SMALL],
            "epsilon: argument --noise-multiplier: expected a number > 0, got '0'",
        ),
        (
            ["epsilon", "--sigma-dp", "0", *SMALL],
            "epsilon: argument --sigma-dp: expected a number > 0, got '0'",
        ),
        (
            ["epsilon", "--noise-multiplier", "1", *SMALL[:-1], "1.5"],
            "epsilon: argument --delta: expected a number in (0, 1), got '1.5'",
        ),
        (["epsilon", *SMALL], "--noise-multiplier"),
        (
            [
                "epsilon",
                "--noise-multiplier",
                "1",
                *SMALL,
                "--sampling",
                "fixed",
                "--accountant",
                "pld",
            ],
            "--accountant rdp with --sampling fixed",
        ),
        (
            ["calibrate", "--target-epsilon", "-1", *SMALL],
            "calibrate: argument --target-epsilon: expected a number > 0, got '-1'",
        ),
        (["extrapolate", "--sigma-dp", "1e-5"], "--target-cohort"),
        (["extrapolate"], "--rows"),
        (["extrapolate", "--rows", "/nonexistent/rows.csv"], "cannot read"),
        (
            [
                "extrapolate",
                "--sigma-dp",
                "1e-5",
                "--target-cohort",
                "51200",
                "--target-population",
                "1000",
            ],
            "extrapolate: --target-cohort (51,200) must not exceed --target-population (1,000)",
        ),
        (
            [
                "extrapolate",
                "--sigma-dp",
                "1e-5",
                "--target-cohort",
                "512",
                "--target-population",
                "1000",
                "--rounds",
                "0",
            ],
            "extrapolate: argument --rounds: expected an integer >= 1, got '0'",
        ),
        (
            [
                "extrapolate",
                "--sigma-dp",
                "1e-5",
                "--target-cohort",
                "51200",
                "--target-sampling-rate",
                "1.5",
            ],
            "sampling rate",
        ),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_exits_nonzero_with_one_line(capsys, argv, fragment):
    status, out, err = run(capsys, *argv)
    assert status == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("fl-dp-asr-privacy: error:") and fragment in err


@pytest.mark.parametrize(
    "content,fragment",
    [
        ("sigma_dp,target_cohort,rounds\n1e-5,10,5\n", "exactly one of"),
        ("sigma_dp,target_cohort,target_population,rounds,colour\n1e-5,10,100,5,red\n", "colour"),
        (
            "sigma_dp,target_cohort,target_population,rounds\n1e-5,10,100.5,5\n",
            ":2: column 'target_population'",
        ),
        ("sigma_dp,target_cohort,target_population,rounds\n1e-5,10,100\n", ":2: expected 4"),
        ("sigma_dp,target_cohort,target_population,rounds\n", "no rows"),
        (
            "sigma_dp,target_cohort,target_population,rounds\n1e-5,10,100,0\n",
            ":2: column 'rounds': expected an integer >= 1, got '0'",
        ),
        (
            "sigma_dp,target_cohort,target_population,rounds\n1e-5,200,100,5\n",
            ":2: target_cohort (200) must not exceed target_population (100)",
        ),
    ],
)
def test_bad_rows_file_names_file_line_and_column(capsys, tmp_path, content, fragment):
    rows = tmp_path / "rows.csv"
    rows.write_text(content, encoding="utf-8")
    status, _, err = run(capsys, "extrapolate", "--rows", str(rows))
    assert status == 2 and len(err.strip().splitlines()) == 1 and fragment in err


def test_module_runs_as_a_program():
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "fl_dp_asr.cli.privacy",
            "epsilon",
            "--sigma-dp",
            "0.1",
            *SMALL,
            "--accountant",
            "rdp",
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["results"][0]["accountant"] == "rdp"
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "fl_dp_asr.cli.privacy",
            "epsilon",
            "--sigma-dp",
            "0.1",
            "--cohort",
            "10",
            "--population",
            "6.5",
            "--rounds",
            "1",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 2 and bad.stdout == ""
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr


# --------------------------------------------------------------------------------------
# Correlated noise (--mechanism blt|banded_toeplitz)
# --------------------------------------------------------------------------------------
CORRELATED = [
    "--cohort",
    "10",
    "--population",
    "100",
    "--rounds",
    "12",
    "--delta",
    "1e-6",
    "--mechanism",
    "banded_toeplitz",
]


def test_correlated_epsilon_is_the_mechanisms_and_says_what_it_assumes(capsys):
    from fl_dp_asr.dp.correlated import CorrelatedNoise

    status, out, _ = run(
        capsys, "epsilon", "--sigma-dp", "0.2", *CORRELATED, "--min-separation", "4", "--json"
    )
    assert status == 0
    data = json.loads(out)
    settings = data["settings"]
    assert settings["neighboring_relation"] == "zero-out-one-user"
    assert (settings["min_separation"], settings["max_participations"]) == (4, 3)
    mechanism = CorrelatedNoise.from_dict(settings["strategy"])
    assert mechanism == CorrelatedNoise("banded_toeplitz", 12, 4).optimize()
    by_name = {r["accountant"]: r for r in data["results"]}
    assert by_name["rdp"]["noise_multiplier"] == pytest.approx(2.0)  # z = S·σ_DP
    for name in ("rdp", "pld"):
        assert by_name[name]["epsilon"] == pytest.approx(
            mechanism.epsilon(2.0, 1e-6, accountant=name).epsilon
        )
    status, text, _ = run(
        capsys,
        "epsilon",
        "--noise-multiplier",
        "2",
        *CORRELATED,
        "--min-separation",
        "4",
        "--accountant",
        "rdp",
    )
    assert status == 0 and "no sampling amplification claimed" in text
    assert "zero-out-one-user" in text and "k = ⌈T/b⌉ = 3" in text


def test_correlated_min_separation_defaults_to_population_over_cohort(capsys):
    status, out, _ = run(
        capsys,
        "epsilon",
        "--noise-multiplier",
        "2",
        "--cohort",
        "10",
        "--population",
        "35",
        "--rounds",
        "12",
        "--mechanism",
        "banded_toeplitz",
        "--bands",
        "1",
        "--accountant",
        "rdp",
        "--json",
    )
    assert status == 0
    settings = json.loads(out)["settings"]
    assert settings["min_separation"] == 3 and settings["strategy"]["coefs"] == [1.0]
    assert settings["sensitivity"] == pytest.approx(2.0)  # independent noise, k = 4
    # ⌊K/S⌋ = 100 beyond T = 12 rounds: the default (not a value the user gave) is capped
    status, out, _ = run(
        capsys,
        "epsilon",
        "--noise-multiplier",
        "2",
        "--cohort",
        "10",
        "--population",
        "1000",
        "--rounds",
        "12",
        "--mechanism",
        "banded_toeplitz",
        "--bands",
        "1",
        "--accountant",
        "rdp",
        "--json",
    )
    assert status == 0 and json.loads(out)["settings"]["min_separation"] == 12


def test_correlated_calibrate_reaches_the_target(capsys):
    status, out, _ = run(
        capsys, "calibrate", "--target-epsilon", "3", *CORRELATED, "--min-separation", "4", "--json"
    )
    assert status == 0
    for result in json.loads(out)["results"]:
        assert result["epsilon"] <= 3.0 and result["epsilon"] == pytest.approx(3.0, abs=0.01)
        assert result["sigma_dp"] == pytest.approx(result["noise_multiplier"] / 10)
    status, text, _ = run(
        capsys, "calibrate", "--target-epsilon", "3", *CORRELATED, "--min-separation", "4"
    )
    assert status == 0 and "z/sens" in text


def test_correlated_extrapolation_uses_the_target_population(capsys):
    status, out, _ = run(
        capsys,
        "extrapolate",
        "--sigma-dp",
        "1e-3",
        "--target-cohort",
        "500",
        "--target-population",
        "2000",
        "--rounds",
        "12",
        "--mechanism",
        "banded_toeplitz",
        "--accountant",
        "rdp",
        "--json",
    )
    assert status == 0
    (row,) = json.loads(out)["rows"]
    assert row["min_separation"] == 4 and row["noise_multiplier"] == pytest.approx(0.5)
    from fl_dp_asr.dp.correlated import CorrelatedNoise

    expected = CorrelatedNoise("banded_toeplitz", 12, 4).epsilon(0.5, 1e-9).epsilon
    assert row["epsilon_rdp"] == pytest.approx(expected)
    status, text, _ = run(
        capsys,
        "extrapolate",
        "--sigma-dp",
        "1e-3",
        "--target-cohort",
        "500",
        "--target-population",
        "2000",
        "--rounds",
        "12",
        "--mechanism",
        "banded_toeplitz",
        "--accountant",
        "rdp",
        "--markdown",
    )
    assert status == 0 and "| 0.001 | 500 | 2,000 | 4 | 3 | 0.5 |" in text


@pytest.mark.slow
def test_blt_epsilon_on_the_command_line(capsys):
    """The BLT optimizer runs (~10 s for one buffer at n = 12)."""
    status, out, _ = run(
        capsys,
        "epsilon",
        "--noise-multiplier",
        "2",
        "--cohort",
        "10",
        "--population",
        "100",
        "--rounds",
        "12",
        "--mechanism",
        "blt",
        "--min-separation",
        "4",
        "--max-buffers",
        "1",
        "--accountant",
        "rdp",
    )
    assert status == 0 and "BLT, 1 buffer(s)" in out
    assert re.search(r"RDP\s+[0-9.]+", out)


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (
            ["epsilon", "--noise-multiplier", "1", *CORRELATED, "--sampling", "poisson"],
            "--sampling does not apply to --mechanism banded_toeplitz",
        ),
        (
            ["epsilon", "--noise-multiplier", "1", *CORRELATED, "--clipped-count-stddev", "3"],
            "--clipped-count-stddev does not apply",
        ),
        (
            ["epsilon", "--noise-multiplier", "1", *CORRELATED, "--min-separation", "11"],
            "needs a population of at least b·S = 110",
        ),
        (
            [
                "calibrate",
                "--target-epsilon",
                "1",
                *CORRELATED,
                "--min-separation",
                "4",
                "--bands",
                "5",
            ],
            "bands (5) must not exceed min_separation (4)",
        ),
        (
            ["epsilon", "--noise-multiplier", "1", *CORRELATED, "--min-separation", "0"],
            "--min-separation: expected an integer >= 1",
        ),
        # b beyond T is refused, not quietly lowered to T (issue 36)
        (
            [
                "epsilon",
                "--noise-multiplier",
                "1",
                "--cohort",
                "10",
                "--population",
                "1000",
                "--rounds",
                "8",
                "--mechanism",
                "blt",
                "--min-separation",
                "20",
            ],
            "--min-separation 20 exceeds the T = 8 rounds",
        ),
        (
            [
                "extrapolate",
                "--sigma-dp",
                "0.1",
                "--target-cohort",
                "10",
                "--target-population",
                "1000",
                "--rounds",
                "8",
                "--mechanism",
                "blt",
                "--min-separation",
                "20",
            ],
            "pass --min-separation 8 (or less)",
        ),
    ],
)
def test_bad_correlated_input_exits_nonzero_with_one_line(capsys, argv, fragment):
    status, out, err = run(capsys, *argv)
    assert status == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and fragment in err
