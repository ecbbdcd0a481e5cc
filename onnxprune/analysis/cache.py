"""The resumable analysis cache: one JSON file per (model, data, settings), rewritten after each entry.

JSON and never pickle, so a cache file cannot run code. The file is named by the key — a digest of
the model's bytes, the data and every setting that changes a number — and repeats the key inside, with
a checksum of its content: a file from another model or other data, a truncated or hand-edited one,
is reported and started over, never trusted. The checksum is an unkeyed SHA-256: it catches accidents
(truncation, a stray edit), not tampering — whoever can write the cache folder can recompute it, so keep
the folder as private as the results. Only a regular file of bounded size is read (never a FIFO, device
or folder). Each write goes to a temp file of its own that is renamed over the old one, so a process
killed at any moment leaves the last complete state behind, and two processes sharing one cache file
may lose each other's entries (never corrupt them, never fail on each other's temp files).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from onnxprune.analysis.sequential import Tally
from onnxprune.analysis.table import is_number
from onnxprune.atomic import write_text
from onnxprune.data import MAX_JSON_BYTES, read_bounded
from onnxprune.errors import OnnxPruneError, OptionError

FORMAT = "onnxprune-sensitivity-cache"
VERSION = 1


def cache_key(*parts: str) -> str:
    """Digest of the digests and settings that determine every number in the table."""
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def removal_digest(channels: list[int]) -> str:
    """Names the channels an entry zeroes: an entry is reused only for the very same channels, so a
    change in how channels are chosen (criterion, alignment) can never leave a stale number behind."""
    return hashlib.sha256(",".join(map(str, channels)).encode()).hexdigest()[:16]


@dataclass
class AnalysisCache:
    """Finished entries {group: {ratio key: (metric, removal digest[, tally])}} and the baseline (a tally
    when the entry stopped early, see `sequential.Tally`); `path` None keeps
    them in memory. A metric is None when the model produced no finite one."""

    key: str
    path: Path | None = None
    settings: dict = field(default_factory=dict)
    baseline: float | None = None
    entries: dict[str, dict[str, list]] = field(default_factory=dict)

    @staticmethod
    def open(directory: str | Path | None, key: str, settings: dict, force: bool = False) \
            -> tuple[AnalysisCache, str | None]:
        """The cache for `key` in `directory` (created if needed), and a warning if a file was not usable."""
        if directory is None:
            return AnalysisCache(key, None, settings), None
        if Path(directory).exists() and not Path(directory).is_dir():
            raise OptionError(f"{{cache_dir}} {directory}: exists and is not a folder")
        path = Path(directory) / f"{key}.json"
        fresh = AnalysisCache(key, path, settings)
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise OptionError(f"cache {path}: not a regular file (remove it, or pass another {{cache_dir}})")
        if force or not path.exists():
            return fresh, None
        try:
            loaded = _parse(read_bounded(path, MAX_JSON_BYTES, "analysis cache"), key)
        except (OnnxPruneError, ValueError) as exc:
            return fresh, f"cache {path} is unusable ({exc}); starting over"
        loaded.path, loaded.settings = path, settings
        return loaded, None

    def has(self, gid: str, ratio: str, channels: str) -> bool:
        """Whether the entry is finished for exactly these zeroed channels (a `removal_digest`)."""
        entry = self.entries.get(gid, {}).get(ratio)
        return entry is not None and entry[1] == channels

    def get(self, gid: str, ratio: str) -> float | None:
        return self.entries[gid][ratio][0]

    def tally(self, gid: str, ratio: str) -> Tally | None:
        """What an early-stopped entry's samples said (None: it saw every sample, or was not run)."""
        entry = self.entries[gid][ratio]
        return Tally.from_list(entry[2]) if len(entry) > 2 else None

    def put(self, gid: str, ratio: str, metric: float | None, channels: str, tally: Tally | None = None) -> None:
        """Record one entry (with the tally it may go on from) and write the file."""
        finite = metric is not None and math.isfinite(metric)
        self.entries.setdefault(gid, {})[ratio] = [metric if finite else None, channels] \
            + ([tally.to_list()] if tally is not None and all(map(math.isfinite, tally.to_list())) else [])
        self.save()

    def set_baseline(self, metric: float) -> None:
        self.baseline = metric
        self.save()

    def save(self) -> None:
        if self.path is None:
            return
        body = {"key": self.key, "baseline": self.baseline, "entries": self.entries}
        data = {"format": FORMAT, "version": VERSION, **body, "settings": self.settings, "checksum": _checksum(body)}
        write_text(self.path, json.dumps(data, indent=1) + "\n")


def _is_tally(value: object) -> bool:
    """[samples, sum, sum of squares, changed] as `Tally.to_list` writes it."""
    return (isinstance(value, list) and len(value) == 4 and all(is_number(v) for v in value)
            and float(value[0]).is_integer() and value[0] >= 1 and float(value[3]).is_integer())


def _checksum(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _parse(text: bytes, key: str) -> AnalysisCache:
    """A cache from its JSON text; ValueError says why it cannot be trusted."""
    try:
        data = json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
        raise ValueError("not an onnxprune analysis cache of this version")
    if data.get("key") != key:
        raise ValueError("it belongs to another model, data or settings")
    body = {"key": data["key"], "baseline": data.get("baseline"), "entries": data.get("entries")}
    if data.get("checksum") != _checksum(body):
        raise ValueError("checksum mismatch: the file was changed or damaged")
    baseline, entries = body["baseline"], body["entries"]
    if baseline is not None and not is_number(baseline):
        raise ValueError("the baseline is not a number")
    if not isinstance(entries, dict) or not all(isinstance(row, dict) for row in entries.values()):
        raise ValueError("entries are not {group: {ratio: [metric, channels]}}")
    for row in entries.values():
        for value in row.values():
            if not (isinstance(value, list) and len(value) in (2, 3) and isinstance(value[1], str)
                    and (value[0] is None or is_number(value[0])) and (len(value) == 2 or _is_tally(value[2]))):
                raise ValueError("an entry is not [metric, channels] or [metric, channels, tally]")
    return AnalysisCache(key, None, {}, baseline, entries)

