"""The parquet store of a sweep: metadata.json, chunk files and their checks, resuming."""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd

from gradflow import _checks, _io
from gradflow._io import Json
from gradflow.sweep._frame import _coerce, _plain, _table
from gradflow.sweep._plan import FORMAT, _canonical, _Plan

_CHUNK_KEY = b"gradflow.sweep"
_METADATA_KEYS = ("config_hash", "config", "columns", "dtypes", "groups", "complete", "sessions")
_DAMAGED_FIX = "Restore it, or delete the store (or use another workdir) to start over."
_DAMAGED = "the store is damaged. " + _DAMAGED_FIX
_METADATA_EVERY_S = 10.0

# ----------------------------------------------------------------------------- store


def _atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write via ``write(file)`` to an exclusively created hidden temp file beside ``path``,
    fsync, :func:`os.replace` (:func:`gradflow._io.atomic_write`)."""
    _io.atomic_write(path, write)


def _write_json(path: Path, obj: Json) -> None:
    data = json.dumps(obj, indent=1, default=str).encode()
    _atomic_write(path, lambda f: f.write(data))


def _read_metadata(path: Path) -> dict:
    """``metadata.json`` parsed, with a clear error for a damaged file."""
    try:
        meta = json.loads(path.read_text())
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not a text file ({e}); {_DAMAGED}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); {_DAMAGED}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} holds a {type(meta).__name__}, not a JSON object; {_DAMAGED}")
    config = meta.get("config")
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} store (no config of that format)")
    missing = [k for k in _METADATA_KEYS if k not in meta]
    if missing:
        raise ValueError(f"{path} lacks the field(s) {missing}; {_DAMAGED}")
    return meta


def _check_metadata(meta: Mapping, path: Path) -> _Plan:
    """The plan implied by the stored config; raises if the rest of ``metadata.json`` (hash,
    columns, dtypes, groups) disagrees with it, i.e. the file was edited or damaged."""
    plan = _Plan.from_config(meta["config"], path)
    expected = {
        "config_hash": plan.config_hash,
        "columns": list(plan.columns),
        "dtypes": plan.dtypes,
        "groups": [
            {"static": plan.groups[g], "chunks": plan.chunks_per_group}
            for g in range(len(plan.groups))
        ],
    }
    stored = {
        "config_hash": meta["config_hash"],
        "columns": meta["columns"],
        "dtypes": meta["dtypes"],
        "groups": [
            {"static": grp.get("static"), "chunks": grp.get("chunks")}
            if isinstance(grp, Mapping) else grp
            for grp in (meta["groups"] if isinstance(meta["groups"], list) else [meta["groups"]])
        ],
    }  # fmt: skip
    bad = [k for k in expected if _canonical(expected[k]) != _canonical(stored[k])]
    if bad:
        raise ValueError(
            f"{path} does not match its own config: {', '.join(bad)} differ from what the "
            f"config implies (e.g. {bad[0]}: stored {_short(stored[bad[0]])} vs implied "
            f"{_short(expected[bad[0]])}); the file was edited or damaged. {_DAMAGED_FIX}"
        )
    return plan


def load_metadata(workdir: str | os.PathLike) -> dict:
    """The ``metadata.json`` of a sweep store (config, groups, dtypes, sessions), checked: its
    hash, columns, dtypes and groups must be those its config implies.

    Raises:
      FileNotFoundError: ``workdir`` holds no ``metadata.json``.
      ValueError: the file is not valid JSON, not a gradflow sweep store, or was edited.
    """
    path = _checks.path("workdir", workdir) / "metadata.json"
    if not path.is_file():
        raise FileNotFoundError(f"{workdir} is not a gradflow sweep store: no metadata.json")
    meta = _read_metadata(path)
    _check_metadata(meta, path)
    return meta


def load(workdir: str | os.PathLike) -> pd.DataFrame:
    """The tidy table of a sweep store, in (group, run, metric, index) order.

    Works on a partial store (a sweep still running or killed): it holds the completed chunks;
    ``load_metadata(workdir)["complete"]`` says whether the sweep finished.
    ``pd.read_parquet(Path(workdir) / "rows")`` reads the same rows, unchecked.

    Every chunk is checked before use: its file name, the sweep identity it carries (config
    hash, group, chunk) and its key columns (the group's static values, the chunk's
    hyperparameters and seeds, the same number of rows per run) must be those of this store, so
    a chunk copied from another sweep or swapped with another chunk is refused, never mixed in.

    Raises:
      FileNotFoundError: no ``metadata.json``.
      ValueError: damaged or edited metadata, ``rows`` not a directory, or a chunk that does
        not belong to this store (the message names the file).
    """
    workdir = _checks.path("workdir", workdir)
    path = workdir / "metadata.json"
    if not path.is_file():
        raise FileNotFoundError(f"{workdir} is not a gradflow sweep store: no metadata.json")
    plan = _check_metadata(_read_metadata(path), path)
    rows = workdir / "rows"
    if rows.exists() and not rows.is_dir():
        raise ValueError(f"{rows} is not a directory; {_DAMAGED}")
    names = _foreign_chunks(plan, rows)
    parts = []
    for g in range(len(plan.groups)):
        for c in range(plan.chunks_per_group):
            name = plan.chunk_file(g, c)
            if name in names:
                parts.append(_read_chunk(plan, g, c, rows / name))
    return _table(plan, parts)


# ----------------------------------------------------------------------------- chunk checks


def _chunk_identity(plan: _Plan, g: int, c: int) -> dict:
    return {
        "format": FORMAT,
        "config_hash": plan.config_hash,
        "group": g,
        "chunk": c,
        "static": plan.groups[g],
    }


def _write_chunk(path: Path, frame: pd.DataFrame, plan: _Plan, g: int, c: int) -> None:
    """One chunk's rows as parquet, carrying its identity in the schema's key-value metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[_CHUNK_KEY] = _canonical(_chunk_identity(plan, g, c)).encode()
    table = table.replace_schema_metadata(meta)
    _atomic_write(path, lambda f: pq.write_table(table, f))


def _foreign_chunks(plan: _Plan, rows: Path) -> set[str]:
    """The chunk files in ``rows`` (names), after refusing any parquet file that is not a chunk
    of this plan (another sweep's chunk copied in, or a renamed file)."""
    if not rows.is_dir():
        return set()
    expected = {
        plan.chunk_file(g, c) for g in range(len(plan.groups)) for c in range(plan.chunks_per_group)
    }
    present = {p.name for p in rows.glob("*.parquet")}
    foreign = sorted(present - expected)
    if foreign:
        raise ValueError(
            f"{rows / foreign[0]} is not a chunk of this sweep (config hash "
            f"{plan.config_hash[:12]}; {len(foreign)} such file(s)): it comes from another sweep "
            "or was renamed. Move it out of the store; results are never mixed."
        )
    return present


def _check_chunk(plan: _Plan, g: int, c: int, path: Path, table) -> None:
    """Raise unless the pyarrow ``table`` read from ``path`` is chunk ``c`` of group ``g``."""
    where = f"{path} (named as group {g}, chunk {c})"
    raw = (table.schema.metadata or {}).get(_CHUNK_KEY)
    if raw is not None:  # stores written before chunks carried their identity have none
        try:
            ident = json.loads(raw)
        except ValueError:
            ident = None
        want = _chunk_identity(plan, g, c)
        if not isinstance(ident, dict) or _canonical(ident) != _canonical(want):
            got = ident if isinstance(ident, dict) else {}
            raise ValueError(
                f"{where} belongs elsewhere: it carries config hash "
                f"{str(got.get('config_hash'))[:12]}, group {got.get('group')}, chunk "
                f"{got.get('chunk')} (this store: {plan.config_hash[:12]}, group {g}, chunk "
                f"{c}). Delete it and rerun the sweep to recompute it; results are never mixed."
            )
    keys = [*plan.grid_keys, "seed"]
    missing = [k for k in keys if k not in table.column_names]
    if missing:
        raise ValueError(f"{where} lacks the column(s) {missing}; delete it and rerun the sweep")
    frame = _coerce(table.select(keys).to_pandas(), {k: plan.dtypes[k] for k in keys})
    runs = frame.drop_duplicates(ignore_index=True)
    want = plan.chunk_keys(g, c)

    def rows(df):
        return sorted(
            (tuple(_plain(v) for v in r) for r in df.itertuples(index=False)),
            key=repr,
        )

    if len(runs) != len(want) or rows(runs) != rows(want):
        raise ValueError(
            f"{where} holds other runs than that chunk: its hyperparameters and seeds "
            f"{_short(rows(runs)[:4], 160)} vs expected {_short(rows(want)[:4], 160)}. Delete "
            "it and rerun the sweep to recompute it; results are never mixed."
        )
    sizes = frame.groupby(keys, dropna=False, sort=False).size()
    if sizes.nunique() != 1:
        raise ValueError(
            f"{where} holds {sizes.min()} to {sizes.max()} rows per run (duplicated or missing "
            "rows). Delete it and rerun the sweep to recompute it."
        )


def _read_chunk(plan: _Plan, g: int, c: int, path: Path) -> pd.DataFrame:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise ValueError(
            f"{path} is not a readable parquet file ({e}); delete it and rerun the sweep"
        ) from None
    _check_chunk(plan, g, c, path, table)
    if list(table.column_names) != list(plan.columns):
        raise ValueError(
            f"{path} has the columns {table.column_names}, not {list(plan.columns)}; delete it "
            "and rerun the sweep"
        )
    return _coerce(table.to_pandas(), plan.dtypes)


def _diff(stored: Mapping, current: Mapping) -> list[str]:
    lines = []
    for k in sorted(set(stored) | set(current)):
        a, b = stored.get(k, "<absent>"), current.get(k, "<absent>")
        if _canonical(a) != _canonical(b):
            lines.append(f"  {k}: stored {_short(a)} vs now {_short(b)}")
    return lines


def _short(obj: object, limit: int = 200) -> str:
    text = _canonical(obj)
    return text if len(text) <= limit else text[:limit] + "..."


def _open_store(
    workdir: Path, plan: _Plan
) -> tuple[dict[str, Json] | None, np.ndarray, str | None]:
    """Process 0, holding the store's lock: create or check the store; return (metadata, done
    mask, error). Every existing chunk is checked against this sweep (:func:`_check_chunk`)."""
    rows = workdir / "rows"
    meta_path = workdir / "metadata.json"
    done = np.zeros((len(plan.groups), plan.chunks_per_group), dtype=bool)
    if rows.exists() and not rows.is_dir():
        raise ValueError(f"{rows} is not a directory; {_DAMAGED}")
    if meta_path.exists():
        meta = _read_metadata(meta_path)
        if meta["config_hash"] != plan.config_hash:
            diff = _diff(meta["config"], plan.config) or ["  (same fields, different hash)"]
            return None, done, (
                f"the sweep store {workdir} holds a different sweep; changed fields:\n"
                + "\n".join(diff)
                + "\nUse a fresh workdir for a new sweep (or delete this one to start over)."
            )  # fmt: skip
        _check_metadata(meta, meta_path)
    else:
        if rows.is_dir() and any(rows.glob("*.parquet")):
            return None, done, f"{rows} holds parquet files but {meta_path} is missing"
        meta = _new_metadata(plan)
    rows.mkdir(exist_ok=True)
    # Left by a killed writer; never renamed, never counted. Safe: we hold the store's lock.
    for stale in itertools.chain(rows.glob(".*.tmp"), workdir.glob(".*.tmp")):
        stale.unlink(missing_ok=True)
    _mark_stored_chunks(plan, rows, done)
    return meta, done, None


def _new_metadata(plan: _Plan) -> dict[str, Json]:
    """``metadata.json`` of a new store: the config and its hash, columns, groups, no session."""
    return {
        "config_hash": plan.config_hash,
        "config": plan.config,
        "fn": plan.fn_name,
        "columns": list(plan.columns),
        "dtypes": plan.dtypes,
        "groups": [
            {
                "group": g,
                "label": plan.group_label(g),
                "static": plan.groups[g],
                "runs": plan.runs_per_group,
                "chunks": plan.chunks_per_group,
            }
            for g in range(len(plan.groups))
        ],
        "complete": False,
        "sessions": [],
    }


def _mark_stored_chunks(plan: _Plan, rows: Path, done: np.ndarray) -> None:
    """Set ``done[g, c]`` for every chunk file in ``rows``, each checked to be that chunk of this
    sweep (its key columns read, not its values); a foreign or unreadable file raises."""
    import pyarrow.parquet as pq

    existing = _foreign_chunks(plan, rows)
    for g in range(len(plan.groups)):
        for c in range(plan.chunks_per_group):
            path = rows / plan.chunk_file(g, c)
            if path.name in existing:
                try:
                    table = pq.read_table(path, columns=[*plan.grid_keys, "seed"])
                except (OSError, ValueError) as e:
                    raise ValueError(
                        f"{path} is not a readable parquet file ({e}); delete it and rerun the "
                        "sweep to recompute it"
                    ) from None
                _check_chunk(plan, g, c, path, table)
                done[g, c] = True


class _Metadata:
    """The store's ``metadata.json`` while a session runs, written by process 0 (``meta`` is
    None on the others): when the session starts, at most every :data:`_METADATA_EVERY_S`
    seconds while it runs (so a killed run leaves recent timings), and when it ends."""

    def __init__(self, path: Path, meta: dict[str, Json] | None, session: dict[str, Json]):
        self.path, self.meta, self.session = path, meta, session
        if meta is not None:
            meta["sessions"].append(session)
            _write_json(path, meta)
        self._written = time.monotonic()

    def save_every(self) -> None:
        """Write the file if the last write is older than :data:`_METADATA_EVERY_S`."""
        if self.meta is not None and time.monotonic() - self._written > _METADATA_EVERY_S:
            _write_json(self.path, self.meta)
            self._written = time.monotonic()

    def close(self, *, complete: bool) -> None:
        """End the session: its finish time and whether the sweep is complete."""
        if self.meta is not None:
            self.session["finished"] = _io.timestamp()
            self.meta["complete"] = complete
            _write_json(self.path, self.meta)


def _prepare_workdir(workdir: Path) -> None:
    """Create ``workdir``; say clearly what is wrong when it cannot be a store."""
    if workdir.exists() and not workdir.is_dir():
        raise ValueError(f"workdir {workdir} exists and is not a directory")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise type(e)(
            e.errno, f"cannot create the sweep store {workdir}: {e.strerror}", e.filename
        ) from None
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise PermissionError(
            13, f"cannot write the sweep store {workdir}: permission denied", str(workdir)
        )
