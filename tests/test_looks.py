"""Every read of the test split's labels is a logged look (lab/looks.py): evaluate appends one
to the model folder's test_evaluations.jsonl; a folder that is not a test split is no look."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from edge_pneumo.apps.cli import app
from edge_pneumo.errors import EXIT_OK
from edge_pneumo.lab.looks import LOG_ENV, TEST_LOG

runner = CliRunner()


def _looks(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def test_evaluate_on_test_is_a_logged_look_and_on_train_is_not(exported_copy, synthetic_data, monkeypatch):
    monkeypatch.delenv(LOG_ENV, raising=False)
    log = exported_copy / TEST_LOG
    before = _looks(log)
    for data in (synthetic_data, synthetic_data / "test", synthetic_data / "train"):
        r = runner.invoke(app, ["evaluate", "--model", str(exported_copy), "--data", str(data), "--json"])
        assert r.exit_code == EXIT_OK, r.output
        report = json.loads(r.stdout)
    looks = _looks(log)
    assert looks[: len(before)] == before and len(looks) == len(before) + 2  # DIR and DIR/test; not DIR/train
    assert all(look["by"] == "evaluate" for look in looks[len(before) :])
    assert looks[-1]["data"] == str(synthetic_data / "test") and report["data"] == str(synthetic_data / "train")


def test_the_look_log_can_be_elsewhere(exported_copy, synthetic_data, tmp_path, monkeypatch):
    elsewhere = tmp_path / "looks.jsonl"
    monkeypatch.setenv(LOG_ENV, str(elsewhere))
    before = _looks(exported_copy / TEST_LOG)
    r = runner.invoke(app, ["evaluate", "--model", str(exported_copy), "--data", str(synthetic_data), "--json"])
    assert r.exit_code == EXIT_OK, r.output
    (look,) = _looks(elsewhere)
    assert look["accuracy"] == json.loads(r.stdout)["accuracy"]
    assert _looks(exported_copy / TEST_LOG) == before
