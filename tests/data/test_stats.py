"""Statistics command: text summary and PNG."""

from __future__ import annotations

import numpy as np
import pytest

from fl_dp_asr.data import FederatedDataset
from fl_dp_asr.data.stats import main, summarize


def test_summary_histogram():
    counts = {"a": 1, "b": 1, "c": 3, "d": 12}
    source = [
        {
            "audio": np.zeros(16_000, np.int16),
            "user_id": user,
            "utterance_id": f"{user}{k}",
            "transcript": "x",
        }
        for user, n in counts.items()
        for k in range(n)
    ]
    summary = summarize(FederatedDataset.from_source(source))
    assert (summary["users"], summary["utterances"]) == (4, 17)
    assert summary["hours"] == 17 / 3600
    assert summary["histogram"] == [("1", 2), ("2", 0), ("3-5", 1), ("6-10", 0), ("11-20", 1)]
    assert summary["utterances_per_user"]["max"] == 12
    assert summary["users_by_gender"] == {"unknown": 4}  # the source has no gender


def test_command_prints_and_plots(tiny_corpus, tfds_dir, tmp_path, capsys):
    png = tmp_path / "stats.png"
    assert (
        main(
            [
                "--dataset",
                "common_voice_local",
                "--config",
                "en",
                "--split",
                "train",
                "--manual-dir",
                str(tiny_corpus),
                "--data-dir",
                str(tfds_dir),
                "--plot",
                str(png),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "common_voice_local/en train: 3 users, 8 utterances" in out
    genders = out.split("users by gender: ")[1].splitlines()[0]
    assert sum(int(part.split()[1]) for part in genders.split(", ")) == 3
    assert {part.split()[0] for part in genders.split(", ")} <= {"female", "male"}
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_command_errors_exit_with_status_2_like_the_trainers(tmp_path, capsys):
    assert (
        main(
            [
                "--dataset",
                "librispeech_local",
                "--config",
                "dev-other",
                "--manual-dir",
                str(tmp_path / "missing"),
                "--data-dir",
                str(tmp_path / "tfds"),
            ]
        )
        == 2
    )
    assert capsys.readouterr().err.startswith("error: ")
    with pytest.raises(SystemExit) as exit_info:  # argparse's own usage errors: 2 as well
        main(["--dataset", "librispeech_local"])
    assert exit_info.value.code == 2
