"""LoRA adapters served beside the base model: the files in a folder (EngineConfig.adapters_dir), placed in the
decoder's AdapterBank (engine.lm.lora) when a session or prediction asks for one, without a restart.

The folder is scanned again on cheap triggers only: when a client asks for the list, or names an adapter not known
yet (or whose file changed). A scan reads each new or changed file's header (its metadata: no tensor) and keeps why
an adapter cannot serve here (another base checkpoint, a rank above the bank's, a damaged file), so the list shows
only what serves and asking for the others answers that reason. A session or prediction holds its adapter's slot
while it runs; a slot no one holds is given to another adapter when all are taken, least recently used first.
"""

import logging
import threading
import typing as tp
from dataclasses import dataclass
from pathlib import Path

from engine.lm.lora import FORMAT, SUFFIX, AdapterBank, AdapterError, base_fingerprint, load_adapter
from engine.params import BASE_MODEL

logger = logging.getLogger(__name__)


class UnknownModel(ValueError):
    """A model name that names neither the base model nor an adapter that serves here; the message lists those."""


@dataclass
class _Entry:
    path: Path
    stamp: tuple[int, int]  # (mtime_ns, size): a changed file is read again
    rank: int = 0
    problem: tp.Optional[str] = None  # why it cannot serve here


class AdapterLibrary:
    """The adapters of one folder, for one decoder. Thread-safe; `acquire` may block while a slot is written on
    the LM thread (`run_on_lm`), so it must not be called from that thread."""

    def __init__(self, lm, decoder, folder: Path, slots: int, max_rank: int,
                 run_on_lm: tp.Callable[[tp.Callable[[], tp.Any]], tp.Any]) -> None:
        self.folder = Path(folder)
        self.slots = slots
        self.max_rank = max_rank
        self._lm = lm
        self._decoder = decoder
        self._run_on_lm = run_on_lm
        self.fingerprint = base_fingerprint(lm)
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._bank: tp.Optional[AdapterBank] = None
        self._slot_of: dict[str, tuple[int, tuple[int, int]]] = {}  # name -> (slot, stamp of the file loaded)
        self._holders = [0] * (slots + 1)
        self._used = [0] * (slots + 1)  # a counter of the last acquire, for least-recently-used reuse
        self._clock = 0
        if self.names():  # adapters exist at start: the bank is part of the step before any graph is captured
            self._ensure_bank()

    @property
    def bank(self) -> tp.Optional[AdapterBank]:
        return self._bank

    def names(self) -> list[str]:
        """The adapters that serve here, after a scan of the folder."""
        with self._lock:
            self._scan()
            return sorted(name for name, entry in self._entries.items() if entry.problem is None)

    def refused(self) -> dict[str, str]:
        """Adapters in the folder that cannot serve here, with the reason (as of the last scan)."""
        with self._lock:
            return {name: entry.problem for name, entry in self._entries.items() if entry.problem is not None}

    def acquire(self, name: tp.Optional[str]) -> int:
        """The bank slot serving `name` (0: the base model, for None), loaded into the bank if needed; held until
        `release`. UnknownModel or AdapterError say why it cannot serve."""
        if name is None:
            return 0
        with self._lock:
            entry = self._entries.get(name)
            if entry is None or entry.stamp != _stamp(entry.path):
                self._scan()
                entry = self._entries.get(name)
            if entry is None:
                served = [BASE_MODEL] + sorted(n for n, e in self._entries.items() if e.problem is None)
                raise UnknownModel(f"model {name!r} is not served here (no {name}{SUFFIX} in the adapters folder); "
                                   f"served: {', '.join(served)}")
            if entry.problem is not None:
                raise AdapterError(f"model {name!r} cannot serve here: {entry.problem}")
            slot = self._place(name, entry)
            self._holders[slot] += 1
            self._clock += 1
            self._used[slot] = self._clock
            return slot

    def release(self, slot: int) -> None:
        """Lets go of a slot `acquire` gave (0 is a no-op)."""
        if slot:
            with self._lock:
                self._holders[slot] = max(0, self._holders[slot] - 1)

    # -- under the lock ---------------------------------------------------------------------------------------
    def _scan(self) -> None:
        found: dict[str, _Entry] = {}
        paths = sorted(self.folder.glob("*" + SUFFIX)) if self.folder.is_dir() else []
        for path in paths:
            name = path.name.removesuffix(SUFFIX)
            stamp = _stamp(path)
            known = self._entries.get(name)
            found[name] = known if known is not None and known.stamp == stamp else self._inspect(path, stamp)
        for name in found.keys() - self._entries.keys():
            problem = found[name].problem
            logger.info("adapter %s found in %s%s", name, self.folder, f", refused: {problem}" if problem else "")
        self._entries = found

    def _inspect(self, path: Path, stamp: tuple[int, int]) -> _Entry:
        """The file's header checked against this server: no tensor is read."""
        from safetensors import safe_open

        entry = _Entry(path, stamp)
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
        except Exception as error:  # safetensors' own error types for a damaged file
            entry.problem = f"not a readable safetensors file ({error})"
            return entry
        if metadata.get("format") != FORMAT:
            entry.problem = f"metadata format is {metadata.get('format')!r}, expected {FORMAT!r}"
        elif metadata.get("base_fingerprint") != self.fingerprint:
            entry.problem = (f"trained on base weights {metadata.get('base_fingerprint')}, the loaded checkpoint is "
                             f"{self.fingerprint}")
        else:
            entry.rank = int(metadata.get("rank", "0") or 0)
            if entry.rank > self.max_rank:
                entry.problem = (f"rank {entry.rank}; this server holds adapters of rank <= {self.max_rank} "
                                 "(MUSICGEN_ADAPTER_MAX_RANK)")
        return entry

    def _place(self, name: str, entry: _Entry) -> int:
        placed = self._slot_of.get(name)
        if placed is not None and placed[1] == entry.stamp:
            return placed[0]
        if placed is not None and self._holders[placed[0]] == 0:
            slot = placed[0]  # a changed file, its slot free: reloaded in place
        else:
            owners = {s for s, _ in self._slot_of.values()}
            free = [s for s in range(1, self.slots + 1) if s not in owners]
            idle = sorted((self._used[s], s) for s in owners if self._holders[s] == 0)
            if not free and not idle:
                raise AdapterError(f"all {self.slots} adapter slots hold adapters in use (MUSICGEN_ADAPTER_SLOTS); "
                                   f"try again when a session with another adapter ends")
            slot = free[0] if free else idle[0][1]
        adapter = load_adapter(entry.path, "cpu")
        bank = self._ensure_bank()
        self._run_on_lm(lambda: bank.load(slot, adapter))
        self._slot_of = {n: p for n, p in self._slot_of.items() if p[0] != slot}
        self._slot_of[name] = (slot, entry.stamp)
        logger.info("adapter %s (rank %d, %.1f MB) serves from slot %d", name, adapter.rank, adapter.nbytes / 2**20,
                    slot)
        return slot

    def _ensure_bank(self) -> AdapterBank:
        if self._bank is None:
            bank = AdapterBank(self._lm, self.slots, self.max_rank, self._decoder.dtype)
            self._run_on_lm(lambda: self._decoder.attach_adapters(bank))
            self._bank = bank
            logger.info("adapter bank: %d slots of rank <= %d, %.0f MB", self.slots, self.max_rank,
                        bank.nbytes / 2**20)
        return self._bank


def _stamp(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
    except OSError:
        return (0, 0)
    return (stat.st_mtime_ns, stat.st_size)
