"""`edge-pneumo batch SOURCE --output results.jsonl|.csv|.parquet [--cluster local[:N] | tcp://HOST:8786] [--resume]`

Whole archives on an existing engine (Dask distributed), not a scheduler of our own:
- SOURCE: a folder (recursive), a text file listing paths or URLs, or an fsspec URL
  (`file://`, `s3://`, `gs://`, ... with a glob or a prefix);
- the inputs are cut into partitions; each Dask task classifies one partition with a
  Classifier loaded once per worker process, and returns `infer`'s rows;
- CSV and Parquet have `infer --format csv`'s columns and cells (apps/rows.py);
- rows stream to the output as partitions finish (never all held in memory), through the same
  ledger as `watch` (keyed by the input's path), so `--resume` skips what is already there and
  nothing is written twice, even when a worker is killed and Dask runs its task again;
- `local:N` starts an embedded LocalCluster of N worker processes; an address uses a real cluster
  (the model folder must be readable by its workers, or name a model inside the package: seed, small).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from edge_pneumo.apps.rows import write_csv, write_parquet
from edge_pneumo.decoders import limits
from edge_pneumo.decoders.decode import IMAGE_SUFFIXES
from edge_pneumo.errors import EdgePneumoError, InputImageError, MissingRuntimeError

_WORKER_CLASSIFIERS: dict = {}
OUTPUT_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def _need_dask():
    try:
        import dask  # noqa: F401
        import distributed  # noqa: F401
    except ImportError:
        raise MissingRuntimeError("batch needs Dask: pip install 'edge-pneumo[cluster]'") from None


def list_inputs(source: str) -> list[str]:
    """Paths or URLs from a folder, a list file, or an fsspec URL (glob or prefix)."""
    p = Path(source)
    if "://" not in source:
        if p.is_dir():
            found = sorted(str(f) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise InputImageError(f"{p}: no image files in this folder ({', '.join(sorted(IMAGE_SUFFIXES))})")
            return found
        if p.is_file() and p.suffix.lower() not in IMAGE_SUFFIXES:
            lines = [line.strip() for line in p.read_text().splitlines()]
            items = [line for line in lines if line and not line.startswith("#")]
            if not items:
                raise InputImageError(f"{p}: the list is empty")
            return items
        if p.is_file():
            return [str(p)]
        raise InputImageError(f"{p}: no such folder, list file or image")
    try:
        import fsspec
    except ImportError:
        raise MissingRuntimeError("URL sources need fsspec: pip install 'edge-pneumo[cluster]'") from None
    fs, _, paths = fsspec.get_fs_token_paths(source)
    if len(paths) == 1 and fs.isdir(paths[0]):
        paths = [f for f in fs.find(paths[0]) if Path(f).suffix.lower() in IMAGE_SUFFIXES]
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    urls = sorted(p if "://" in p or protocol == "file" else f"{protocol}://{p}" for p in paths)
    if not urls:
        raise InputImageError(f"{source}: nothing matches")
    return urls


def _read(item: str) -> bytes:
    if "://" in item and not item.startswith("file://"):
        import fsspec

        with fsspec.open(item, "rb") as f:
            return f.read()
    from edge_pneumo.decoders.decode import read_bytes

    return read_bytes(Path(item[7:] if item.startswith("file://") else item))


def classify_partition(
    items: list[str],
    model: str | None,
    artifact: str | None,
    guard: bool = True,
    tta: bool = False,
    site: str | None = None,
    max_pixels: int | None = None,
) -> list[dict]:
    """One Dask task: the rows for a partition, with a Classifier cached per worker process.
    `max_pixels`: the client's pixel budget, for workers on other machines (no shared environment)."""
    from edge_pneumo.decoders.limits import set_max_pixels
    from edge_pneumo.device.classifier import Classifier

    set_max_pixels(max_pixels)

    key = (model, artifact, guard, tta, site)
    clf = _WORKER_CLASSIFIERS.get(key)
    if clf is None:
        clf = _WORKER_CLASSIFIERS[key] = Classifier.load(
            model, artifact=artifact, threads=1, guard=guard, tta=tta, site=site
        )
    local = [i for i in items if "://" not in i or i.startswith("file://")]
    if len(local) == len(items):  # plain files: the classifier's own batched path
        paths = [i[7:] if i.startswith("file://") else i for i in items]
        rows = [r.to_dict() for r in clf.predict_many(paths, decode_threads=1)]
        for row, item in zip(rows, items):
            row["path"] = item
        return rows
    rows = []
    for item in items:
        try:
            data = _read(item)
        except (OSError, EdgePneumoError) as e:
            from edge_pneumo.device.result import failure

            rows.append(failure(item, f"{item}: cannot read ({getattr(e, 'strerror', None) or e})").to_dict())
            continue
        r = clf.predict_bytes(data, name=item, content_hash=False)
        row = r.to_dict()
        row["path"] = item
        rows.append(row)
    return rows


def start_client(cluster: str):
    """`local`, `local:N` (an embedded LocalCluster of N processes) or a scheduler address."""
    _need_dask()
    from distributed import Client, LocalCluster

    if cluster == "local" or cluster.startswith("local:"):
        n = int(cluster.split(":", 1)[1]) if ":" in cluster else (os.cpu_count() or 1)
        lc = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40)
        return Client(lc), lc
    return Client(cluster, timeout="20s"), None


def run_batch(
    source: str,
    output: Path,
    cluster: str = "local",
    *,
    resume: bool = False,
    model: str | None = None,
    artifact: str | None = None,
    partition_size: int = 128,
    guard: bool = True,
    progress: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] = print,
    tta: bool = False,
    site: str | None = None,
) -> dict:
    """`site`: a site file every worker can read (checked here first, so a bad one fails before the cluster starts).
    `model`: as `--model`; a tier name goes to the workers as it is (each finds its own install's copy), after
    a check here that it names a shipped model, so a typo fails before the cluster starts."""
    from edge_pneumo.apps.ledger import ResultSink
    from edge_pneumo.device.tiers import resolve_model

    resolve_model(model)

    if site is not None:
        from edge_pneumo.device.site import load_site

        load_site(site)

    suffix = output.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise EdgePneumoError(f"{output}: the output must end in .jsonl, .csv or .parquet")
    items = list_inputs(source)
    ledger_path = output.with_name(output.name + ".ledger.sqlite")
    if not resume:
        for stale in (output, ledger_path, Path(f"{ledger_path}-wal"), Path(f"{ledger_path}-shm")):
            stale.unlink(missing_ok=True)
    stream = output if suffix in (".jsonl", ".json") else output.with_name(output.name + ".partial.jsonl")
    sink = ResultSink(stream, ledger_path, key_field="path")
    todo = [i for i in items if not sink.seen(i)]
    log(f"{len(items)} inputs, {len(items) - len(todo)} already have a result" if resume else f"{len(items)} inputs")
    counts = {"classified": 0, "rejected": 0, "failed": 0}
    t_cluster = time.perf_counter()
    client = lc = None
    try:
        if todo:
            client, lc = start_client(cluster)
            workers = len(client.scheduler_info().get("workers", {}))
            started = time.perf_counter()
            log(f"cluster: {workers} worker(s) ready in {started - t_cluster:.1f} s")
            from distributed import as_completed

            parts = [todo[i : i + partition_size] for i in range(0, len(todo), partition_size)]
            futures = [
                client.submit(
                    classify_partition,
                    part,
                    None if model is None else str(model),
                    artifact,
                    guard,
                    tta,
                    site,
                    limits.max_pixels(),
                    pure=False,
                    retries=3,
                )
                for part in parts
            ]
            done = 0
            for fut in as_completed(futures):
                rows = fut.result()
                for row, new in zip(rows, sink.record_many([(row["path"], row) for row in rows])):
                    if new:
                        counts[row["status"]] += 1
                done += len(rows)
                fut.release()
                if progress:
                    progress(done, len(todo))
            seconds = time.perf_counter() - started
        else:
            seconds = 0.0
    finally:
        if client is not None:
            client.close()
        if lc is not None:
            lc.close()
        sink.close()
    # CSV and Parquet are made from the streamed JSON lines (kept, with the ledger, for --resume).
    if suffix == ".csv":
        write_csv(_rows_of(stream), output)
    elif suffix == ".parquet":
        write_parquet(_rows_of(stream), output)
    return {
        "inputs": len(items),
        "skipped": len(items) - len(todo),
        **counts,
        "seconds": seconds,
        "images_per_s": (len(todo) / seconds) if seconds else None,
        "cluster_start_s": None if not todo else started - t_cluster,
    }


def _rows_of(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)
