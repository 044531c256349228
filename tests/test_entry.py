"""The console entry: plain `infer` arguments skip Typer, and mean exactly what Typer makes of them."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge_pneumo.apps import infer as infer_cli
from edge_pneumo.apps.cli import app
from edge_pneumo.apps.entry import main, parse_infer_args

PLAIN = [
    ["x.jpeg"],
    ["-"],
    ["--image", "a.png", "-i", "b.jpg", "c.jpeg"],
    ["--image=a.png", "--image", "-", "--no-verify"],
    ["--no-guard", "--heatmap", "maps", "x.jpeg"],
    ["--tta", "--dir", "folder"],
    ["--max-pixels", "1000000", "x.jpeg"],
    ["--dir", "folder", "--model", "exported", "--artifact", "tflite_int8"],
    ["-d", "folder", "-m", "m.onnx", "-f", "csv", "-o", "out.csv"],
    ["--format=json", "--output=r.jsonl", "--threads", "1", "--batch-size=8", "x.jpeg"],
    ["--threads", "3", "--threads", "2", "x.jpeg"],  # repeated: the last one wins
    ["--", "-odd-name.jpeg"],
    [],
]
FOR_TYPER = [
    ["--help"],
    ["--format", "xml", "x.jpeg"],
    ["--threads", "0", "x.jpeg"],
    ["--threads", "two", "x.jpeg"],
    ["--batch-size", "-1", "x.jpeg"],
    ["--bogus", "x.jpeg"],
    ["--model"],
    ["--max-pixels", "0", "x.jpeg"],
]


def _typer_call(monkeypatch, args):
    seen = []
    monkeypatch.setattr(infer_cli, "run_infer", lambda opts: seen.append(opts) or 0)
    r = CliRunner().invoke(app, ["infer", *args])
    return r, (seen[0] if seen else None)


@pytest.mark.parametrize("args", PLAIN, ids=" ".join)
def test_plain_arguments_parse_as_typer_parses_them(monkeypatch, args):
    r, typer_kwargs = _typer_call(monkeypatch, args)
    assert r.exit_code == 0, r.output
    assert parse_infer_args(args) == typer_kwargs


@pytest.mark.parametrize("args", FOR_TYPER, ids=" ".join)
def test_help_and_mistakes_are_left_to_typer(monkeypatch, args):
    assert parse_infer_args(args) is None
    r, called = _typer_call(monkeypatch, args)
    assert called is None and r.exit_code == (0 if args == ["--help"] else 2), r.output


def test_rarer_spellings_are_left_to_typer_which_accepts_them(monkeypatch):
    assert parse_infer_args(["-ix.jpeg"]) is None  # Click's joined short option
    r, called = _typer_call(monkeypatch, ["-ix.jpeg"])
    assert r.exit_code == 0 and called.items == ["x.jpeg"]


def test_fast_path_fails_like_the_typer_command(tmp_path, capsys):
    missing = str(tmp_path / "nope.jpeg")
    model = str(tmp_path / "model.onnx")
    Path(model).write_text("not a model")
    for args in (["--model", model, missing], ["--model", str(tmp_path / "absent"), missing]):
        with pytest.raises(SystemExit) as fast:
            main(["infer", *args])
        fast_err = capsys.readouterr().err
        typer = CliRunner().invoke(app, ["infer", *args])
        assert fast.value.code == typer.exit_code == 3
        assert fast_err.startswith("error: ") and fast_err == typer.stderr


def test_everything_else_goes_to_typer(capsys):
    with pytest.raises(SystemExit) as e:
        main(["infer", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "Usage: edge-pneumo infer" in out and "--no-verify" in out
