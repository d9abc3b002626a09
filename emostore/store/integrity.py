"""``emostore verify``: check that a store holds what it says it holds, and repair what can be
recomputed.

Checked: the utterance table (every column's metadata and chunks), every feature set (its
metadata; for each finished chunk, the ``values``, ``mask``, ``error``, ``done`` and frame chunks
present, their checksums, and ``done`` consistent with them: a valid row has values, a failed
row a reason) and every search index (the pointer to its current version, its arrays).

``--repair`` marks a damaged feature-set chunk pending (``done`` False), so that the next
``extract`` computes it again; an array or a feature set whose metadata is lost is removed
(its rows are then all pending, or the feature set must be extracted again); a damaged index is
removed (build it again). The table cannot be recomputed: its damage is reported, nothing is
changed, and the store must be ingested again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from emostore.store import arrays
from emostore.store.layout import INDEXES

if TYPE_CHECKING:
    from emostore.store.feature_set import FeatureSet
    from emostore.store.store import Store

ROW_ARRAYS = ("values", "mask", "error", "done")


@dataclass
class Damage:
    """One damaged thing: where it is, what is wrong, and what was (or is to be) done."""

    part: str                     # "table", "feature set" or "index"
    name: str                     # the column, feature set or index
    problem: str
    array: str | None = None
    chunk: int | None = None
    rows: tuple[int, int] | None = None
    repairable: bool = True
    repaired: bool = False

    def line(self) -> str:
        where = f"{self.part} {self.name}" + (f", {self.array}" if self.array else "")
        if self.chunk is not None:
            where += f" chunk {self.chunk}"
        if self.rows is not None:
            where += f" (rows {self.rows[0]}-{self.rows[1]})"
        state = " [repaired]" if self.repaired else ("" if self.repairable else " [cannot be repaired]")
        return f"{where}: {self.problem}{state}"


@dataclass
class VerifyReport:
    store: str
    checked: dict[str, list[str]] = field(default_factory=dict)
    damage: list[Damage] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(d.repaired for d in self.damage)

    def to_dict(self) -> dict[str, Any]:
        return {"store": self.store, "ok": self.ok, "checked": self.checked, "notes": self.notes,
                "damage": [{**asdict(d), "line": d.line()} for d in self.damage]}


# ----- feature sets ---------------------------------------------------------------------------
def _consistency(fs: FeatureSet, chunk: int) -> str | None:
    """Decode one finished chunk and check that ``done`` agrees with its files."""
    sl = fs.chunk_slice(chunk)
    try:
        values = np.asarray(fs.array("values")[sl], dtype=np.float32)
        mask = np.asarray(fs.array("mask")[sl], dtype=bool)
        error = np.asarray(fs.array("error")[sl])
        if fs.seq_dim:
            fs.chunk_frames(chunk)
    except Exception as exc:  # noqa: BLE001  (checksum or decoding failure; StoreDamaged for frames)
        return f"it cannot be decoded ({str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__})"
    if (mask & ~np.isfinite(values).all(1)).any():
        return "a valid row has no values"
    if (~mask & (error == "")).any():
        return "a failed row has no reason"
    return None


def verify_feature_set(store: Store, name: str, report: VerifyReport, repair: bool) -> None:
    lost = _lost_metadata(store, name)
    if lost is not None:
        _report_lost(store, name, lost, report, repair)
        return
    fs = store.feature_set(name)
    problems = fs.damaged_chunks()
    done = fs.done(tolerant=True)
    for c in range(fs.n_chunks):
        if c not in problems and done[fs.chunk_slice(c)].all() and (why := _consistency(fs, c)):
            problems[c] = why
    found = []
    for c, why in sorted(problems.items()):
        sl = fs.chunk_slice(c)
        found.append(Damage("feature set", name, why, chunk=c, rows=(sl.start, sl.stop - 1)))
    if repair and found:
        fs.mark_pending([d.chunk for d in found if d.chunk is not None])
        for d in found:
            d.repaired = True
    report.damage += found
    report.checked.setdefault("feature sets", []).append(name)
    pending = int((~fs.done(tolerant=True)).sum())
    if pending:
        report.notes.append(f"{name}: {pending} of {fs.n_rows} rows are pending (not extracted yet, or marked "
                            "for recomputing): its extract command finishes them")
    if not fs.checked:
        report.notes.append(f"{name} was written before chunk checksums: its chunks' bytes were not checked")


def _lost_metadata(store: Store, name: str) -> tuple[str | None, str] | None:
    """``(array or None for the group, problem)`` when a feature set's metadata cannot be read."""
    import zarr

    try:
        group = zarr.open_group(store.location.zarr_store(read_only=True), path=f"features/{name}", mode="r")
        dict(group.attrs)["config_hash"]
    except Exception as exc:  # noqa: BLE001
        return None, f"its metadata (configuration) cannot be read ({type(exc).__name__})"
    keys = [*ROW_ARRAYS, *(("seq_lengths",) if group.attrs.get("seq_dim") else ())]
    for key in keys:
        if not store.location.exists(f"features/{name}/{key}/zarr.json"):
            return key, f"its {key!r} array is missing"
        try:
            zarr.open_array(store.location.zarr_store(read_only=True), path=f"features/{name}/{key}", mode="r")
        except Exception as exc:  # noqa: BLE001
            return key, f"the metadata of its {key!r} array cannot be read ({type(exc).__name__})"
    return None


def _report_lost(store: Store, name: str, lost: tuple[str | None, str], report: VerifyReport,
                 repair: bool) -> None:
    """A feature set whose group or array metadata cannot be read."""
    array, problem = lost
    d = Damage("feature set", name, problem, array=array)
    if repair:
        if array is None:  # the configuration itself is lost: the feature set must be extracted again
            store.location.fs.rm(store.location.key(f"features/{name}"), recursive=True)
            d.problem += " (removed: extract it again)"
        else:  # drop the array, recreate the feature set's arrays, every row pending
            store.location.fs.rm(store.location.key(f"features/{name}/{array}"), recursive=True)
            store.reopen_feature_set(name).mark_pending(list(range(store.feature_set(name).n_chunks)))
            d.problem += " (recreated: every row is pending)"
        d.repaired = True
    report.damage.append(d)
    report.checked.setdefault("feature sets", []).append(name)


# ----- the table and the indexes -------------------------------------------------------------
def verify_table(store: Store, report: VerifyReport) -> None:
    """Every column: metadata readable, chunks present, checksums (damage cannot be repaired)."""
    for column, chunk, problem in store.table_damage():
        report.damage.append(Damage("table", column, problem, chunk=chunk, repairable=False))
    try:
        group = store.root["table"]
        report.checked["table"] = list(group.attrs["columns"])
        if not group.attrs.get(arrays.INTEGRITY):
            report.notes.append("the table was written before chunk checksums: its chunks' bytes were not checked")
    except Exception:  # noqa: BLE001  (reported above)
        report.checked["table"] = []


def verify_indexes(store: Store, report: VerifyReport, repair: bool) -> None:
    """Each index: its pointer names a version that is there, and that version's arrays are intact."""
    names = store.index_names()
    for name in names:
        problem = _index_problem(store, f"{INDEXES}/{name}")
        if problem is None:
            continue
        d = Damage("index", name, problem)
        if repair:
            store.location.fs.rm(store.location.key(f"{INDEXES}/{name}"), recursive=True)
            d.problem += " (removed: build it again with `emostore index build`)"
            d.repaired = True
        report.damage.append(d)
    report.checked["indexes"] = names


def _index_problem(store: Store, path: str) -> str | None:
    import zarr

    try:
        group = zarr.open_group(store.location.zarr_store(read_only=True), path=path, mode="r")
        version = group.attrs.get("current")
        if not version or version not in set(group.group_keys()):
            return f"its pointer names version {version!r}, which is not there"
        v = group[version]
        keys = list(v.array_keys())
    except Exception as exc:  # noqa: BLE001
        return f"its metadata cannot be read ({type(exc).__name__})"
    if "rows" not in keys or not any(k.startswith("faiss") for k in keys):
        return f"version {version} lacks its arrays (rows, faiss)"
    for key in keys:
        try:
            arr = v[key]
        except Exception as exc:  # noqa: BLE001
            return f"its {key!r} array cannot be opened ({type(exc).__name__})"
        states = arrays.check_chunks(store.location, f"{path}/{version}/{key}", arr,
                                     expect_all=arrays.has_checksums(arr))
        if states:
            return f"its {key!r} array: chunk {states[0].index} {states[0].problem}"
    return None


def verify(store: Store, *, feature_set: str | None = None, repair: bool = False) -> VerifyReport:
    """Check the store (or one feature set); with ``repair``, mark what can be recomputed pending."""
    report = VerifyReport(store.url)
    if feature_set is None:
        verify_table(store, report)
    names = [feature_set] if feature_set else store.feature_set_names(include_damaged=True)
    for name in names:
        verify_feature_set(store, name, report, repair)
    if feature_set is None:
        verify_indexes(store, report, repair)
    return report
