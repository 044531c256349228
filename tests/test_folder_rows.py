"""The folder path's rows stay what they were before the speed work (issue 27): every field but `ms`.

tests/data/rows_test_split.json holds fingerprints of the rows made on the test split by the code
before the change (tests/rows_fixture.py); here the same folder run is made again and compared,
row by row. One artifact per runtime.
"""

from __future__ import annotations

import json

import pytest
import rows_fixture


@pytest.mark.parametrize("artifact", rows_fixture.ARTIFACTS)
def test_folder_rows_match_those_made_before(artifact, real_data):
    saved = json.loads(rows_fixture.FIXTURE.read_text())[artifact]
    here = rows_fixture.model_identity(artifact)
    if here != {k: saved.get(k) for k in here}:
        pytest.skip(
            f"fixture made for another model or manifest ({saved['model_version']}); re-make it with the code "
            "before your change: python tests/rows_fixture.py"
        )
    rows = rows_fixture.folder_rows(artifact, real_data.resolve())
    assert rows.keys() == saved["rows"].keys()
    changed = sorted(p for p in rows if rows[p] != saved["rows"][p])
    assert not changed, f"{len(changed)} of {len(rows)} rows changed, e.g. {changed[:5]}"
