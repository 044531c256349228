"""The look log: every read of the test split's labels (train, evaluate, compare) appends one
line to test_evaluations.jsonl in the model's folder, so a reported test figure can say how
often test was seen before it was chosen. $EDGE_PNEUMO_LOOK_LOG names another file."""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

from edge_pneumo import jsonout

TEST_LOG = "test_evaluations.jsonl"
LOG_ENV = "EDGE_PNEUMO_LOOK_LOG"


def is_test_split(split_dir: str | Path) -> bool:
    """The labelled folder read is a test split (DIR/test, or a folder named test itself)."""
    return Path(split_dir).resolve().name == "test"


def look_log(folder: str | Path) -> Path:
    env = os.environ.get(LOG_ENV)
    return Path(env) if env else Path(folder) / TEST_LOG


def append_look(folder: str | Path, entry: dict) -> list[dict]:
    """Append one look; returns every look in the log so far. Raises OSError when it cannot write."""
    path = look_log(folder)
    with path.open("a") as f:
        f.write(jsonout.dumps(entry) + "\n")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def log_look_or_warn(folder: str | Path, what: str, figures: dict) -> None:
    """A look by `evaluate` or `compare`: logged, or a warning when the folder is read-only."""
    entry = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["edge-pneumo", *sys.argv[1:]]) if sys.argv else "",
        "by": what,
        **figures,
    }
    try:
        append_look(folder, entry)
    except OSError as e:
        where = f"{look_log(folder)}: {e.strerror or e}"
        print(f"warning: this look at the test labels is not logged ({where})", file=sys.stderr)
