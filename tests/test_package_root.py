"""The package root: `from edge_pneumo import *` and the public names work, in a fresh process
(the names load lazily, so only a new interpreter shows what a user's first import does)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


def test_star_import_gives_the_public_api():
    p = _run(
        """
        from edge_pneumo import *
        from edge_pneumo.device.classifier import Classifier as C
        from edge_pneumo.device.preprocess import Preprocessing as P
        from edge_pneumo.device.result import Result as R
        assert (Classifier, Preprocessing, Result) == (C, P, R)
        assert __version__
        """
    )
    assert p.returncode == 0, p.stderr


def test_named_imports_and_a_result_round_trip():
    p = _run(
        """
        import sys
        from edge_pneumo import Classifier, Result
        assert callable(Classifier.load)
        r = Result("x.jpeg", "classified", label="NORMAL", probability=0.25, ms=1.5)
        assert r.to_dict()["label"] == "NORMAL" and r.to_dict()["probability"] == 0.25
        assert "tensorflow" not in sys.modules
        """
    )
    assert p.returncode == 0, p.stderr


def test_an_unknown_name_is_an_import_error():
    p = _run("from edge_pneumo import Prediction")
    assert p.returncode != 0 and "ImportError" in p.stderr and "Prediction" in p.stderr
