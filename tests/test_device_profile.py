"""The device profile applies only where it was measured: same runtimes, same artifacts.

Two environments on one device, told apart by the runtime set passed in (as `verify` and
`infer` would detect it): a base install (onnxruntime only) and one with LiteRT too. Two models
(seed, and the same artifacts under another model_version, as small's would be): one entry each.
"""

from __future__ import annotations

import json

import pytest

from edge_pneumo.device import device_profile as dp
from edge_pneumo.device.manifest import default_model_folder, load_manifest

BASE = {"onnxruntime": "1.32.0", "ai_edge_litert": None}
WITH_LITERT = {"onnxruntime": "1.32.0", "ai_edge_litert": "2.3.0"}


@pytest.fixture
def manifest(tmp_path, monkeypatch):
    monkeypatch.setenv(dp.PROFILE_ENV, str(tmp_path / "profile.json"))
    return load_manifest(default_model_folder())


def test_a_profile_from_the_base_install_is_not_applied_where_litert_is_installed(manifest, capsys):
    dp.write_profile(manifest, "onnx_int8", {"onnx_int8": 0.5}, runtimes=BASE)
    assert dp.preferred_artifact(manifest, BASE) == "onnx_int8"  # where it was measured: applied, silently
    assert capsys.readouterr().err == ""
    assert dp.preferred_artifact(manifest, WITH_LITERT) == "tflite_int8"  # the rule: LiteRT installed
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ai_edge_litert absent, here 2.3.0" in err and "verify" in err
    assert dp.preferred_artifact(manifest, WITH_LITERT) == "tflite_int8"
    assert capsys.readouterr().err == ""  # said once per process


def test_a_profile_from_the_litert_install_is_not_applied_on_the_base_install(manifest, capsys):
    # float32 ONNX as the profile's pick: neither environment's rule would choose it, so the test tells them apart
    dp.write_profile(manifest, "onnx_float32", {"onnx_float32": 0.4}, runtimes=WITH_LITERT)
    assert dp.preferred_artifact(manifest, WITH_LITERT) == "onnx_float32"
    assert dp.preferred_artifact(manifest, BASE) == manifest.default_artifact == "onnx_int8"
    assert "ai_edge_litert 2.3.0, here absent" in capsys.readouterr().err


def test_another_runtime_version_or_a_remade_artifact_makes_it_stale(manifest, capsys):
    dp.write_profile(manifest, "onnx_float32", {}, runtimes=BASE)
    newer = {**BASE, "onnxruntime": "1.33.0"}
    assert dp.preferred_artifact(manifest, newer) == "onnx_int8"
    assert "onnxruntime 1.32.0, here 1.33.0" in capsys.readouterr().err
    manifest.artifacts["onnx_int8"].sha256 = "0" * 64  # what a re-export writes into the manifest
    assert dp.preferred_artifact(manifest, BASE) == "onnx_int8"
    assert "onnx_int8 has changed" in capsys.readouterr().err


def test_a_profile_written_before_it_recorded_its_environment_is_not_applied(manifest, capsys):
    old = {"models": {manifest.raw["model_version"]: {"fastest": "onnx_float32", "latency_ms_p50": {}}}}
    dp.profile_path().write_text(json.dumps(old))
    assert dp.preferred_artifact(manifest, WITH_LITERT) == "tflite_int8"
    assert "older version" in capsys.readouterr().err


def test_verify_refreshes_a_stale_profile(manifest, tmp_path, capsys):
    from edge_pneumo.apps.verify import verify_folder

    folder = _passing_copy(manifest, tmp_path / "exported")
    manifest = load_manifest(folder)
    here = dp.installed_runtimes()
    elsewhere = {m: (None if v else "0.1") for m, v in here.items()}
    elsewhere["onnxruntime"] = here["onnxruntime"]  # verify needs onnxruntime to run at all
    dp.write_profile(manifest, "onnx_float32", {}, runtimes=elsewhere)
    assert dp.preferred_artifact(manifest) == dp.rule_choice(manifest, here)
    assert "not used" in capsys.readouterr().err
    report = verify_folder(folder, runs=2)
    assert report["passed"], report
    recorded = dp.read_profile()["models"][manifest.raw["model_version"]]
    assert recorded["measured_with"]["runtimes"] == here
    assert dp.preferred_artifact(manifest) == report["fastest"]
    assert "not used" not in capsys.readouterr().err


def _passing_copy(manifest, dst):
    """The shipped export without the artifacts `verify` fails on this CPU (an int8 ONNX build can
    be off on AVX2-only machines), so that verify passes and writes the profile."""
    import shutil

    from edge_pneumo.apps.verify import verify_folder

    shutil.copytree(manifest.folder, dst)
    failed = {r["name"] for r in verify_folder(dst, runs=1, write_profile=False)["artifacts"] if r["status"] != "ok"}
    raw = json.loads((dst / "manifest.json").read_text())
    raw["artifacts"] = [a for a in raw["artifacts"] if a["name"] not in failed]
    if raw["default_artifact"] in failed:
        raw["default_artifact"] = raw["artifacts"][0]["name"]
    (dst / "manifest.json").write_text(json.dumps(raw))
    return dst


def test_installed_runtimes_reads_versions_without_importing():
    import subprocess
    import sys

    code = (
        "import sys; from edge_pneumo.device.device_profile import installed_runtimes as f; v = f(); "
        "print(v['onnxruntime'], 'onnxruntime' in sys.modules or 'ai_edge_litert' in sys.modules)"
    )
    version, imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.split()
    import onnxruntime

    assert version == onnxruntime.__version__ and imported == "False"


# -- one entry per model: verifying `small` leaves seed's choice alone -------------------------


def _other_model(manifest, version="small-cnn-2026-11-29-standin"):
    """The same artifacts under another model's identity (as the small tier's manifest would be)."""
    other = load_manifest(manifest.folder)
    other.raw["model_version"] = version
    return other


def test_two_models_keep_their_own_choice_in_two_environments(manifest, capsys):
    small = _other_model(manifest)
    dp.write_profile(manifest, "onnx_float32", {"onnx_float32": 0.4}, runtimes=BASE)
    dp.write_profile(small, "tflite_int8", {"tflite_int8": 1.5}, runtimes=WITH_LITERT)
    models = dp.read_profile()["models"]
    assert set(models) == {manifest.raw["model_version"], small.raw["model_version"]}
    assert dp.preferred_artifact(manifest, BASE) == "onnx_float32"
    assert dp.preferred_artifact(small, WITH_LITERT) == "tflite_int8"
    assert capsys.readouterr().err == ""
    # each model's entry is judged by its own environment: small's LiteRT timing does not apply on the base install
    assert dp.preferred_artifact(small, BASE) == "onnx_int8"
    assert "ai_edge_litert 2.3.0, here absent" in capsys.readouterr().err
    assert dp.preferred_artifact(manifest, WITH_LITERT) == "tflite_int8"  # and seed's base timing not under LiteRT
    # verifying seed again, elsewhere, replaces seed's entry only
    dp.write_profile(manifest, "tflite_int8", {"tflite_int8": 0.2}, runtimes=WITH_LITERT)
    assert dp.preferred_artifact(small, WITH_LITERT) == "tflite_int8"
    assert dp.read_profile()["models"][small.raw["model_version"]]["latency_ms_p50"] == {"tflite_int8": 1.5}
    seed_here = dp.measured_figures(manifest.raw, WITH_LITERT)
    assert seed_here == {"artifact": "tflite_int8", "ms_per_image": 0.2, "stale": None}
    assert dp.measured_figures(small.raw, BASE)["stale"].startswith("it was measured with ai_edge_litert")
    assert dp.measured_figures(_other_model(manifest, "never-verified").raw, BASE) is None


def test_a_single_model_profile_still_loads_and_is_migrated(manifest, capsys):
    old = {  # the entry's fields at the top level, naming its model
        "fastest": "onnx_float32",
        "latency_ms_p50": {"onnx_float32": 0.4},
        "model_version": manifest.raw["model_version"],
        "measured_with": dp.measured_with(manifest, BASE),
    }
    dp.profile_path().write_text(json.dumps(old))
    assert dp.preferred_artifact(manifest, BASE) == "onnx_float32"
    assert capsys.readouterr().err == ""
    small = _other_model(manifest)
    dp.write_profile(small, "onnx_int8", {"onnx_int8": 1.0}, runtimes=BASE)
    data = json.loads(dp.profile_path().read_text())
    assert "fastest" not in data and set(data["models"]) == {manifest.raw["model_version"], small.raw["model_version"]}
    assert dp.preferred_artifact(manifest, BASE) == "onnx_float32"


def test_an_unreadable_profile_is_no_profile(manifest):
    for text in ("[1, 2]", '{"models": [1]}', '{"models": {"x": 3}}', "{not json"):
        dp.profile_path().write_text(text)
        assert dp.preferred_artifact(manifest, BASE) == manifest.default_artifact
    dp.write_profile(manifest, "onnx_int8", {}, runtimes=BASE)  # and verify writes a good one over it
    assert dp.preferred_artifact(manifest, BASE) == "onnx_int8"


def test_a_manifest_without_a_version_is_keyed_by_its_source_model():
    assert dp.model_key({"model_version": "v1", "source_model": {"sha256": "ab"}}) == "v1"
    assert dp.model_key({"source_model": {"sha256": "ab"}}) == "sha256:ab"
    assert dp.model_key({}) == ""
