"""The rules of a run folder (``--out``): nothing in it is lost, and one process writes it at a time.

- A new run whose folder already holds a run (``last.json``, ``best.safetensors``, ``metrics.csv`` or engine
  checkpoints) stops with an error naming it; ``--resume`` continues it, ``--overwrite`` starts afresh there
  (removing only the previous run's own files: its pointer, checkpoints, best weights, logs and curves).
- A lock (``.mobilenets.lock``, ``fcntl.flock``) is held for the whole run. The kernel drops it when its holder
  exits, however it exits (``kill -9`` included), so a dead holder never blocks the next run.
- A figure an evaluation draws into a run folder takes a free name (``free_path``: ``confusion.png``, then
  ``confusion-2.png`` …) rather than replacing one drawn before.
- Temporary files of an atomic write that a killed process left behind (``.<name>.<random>.tmp``, see
  ``checkpoint.atomic_write``) are removed once the lock is held (no writer can be alive then).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from mobilenets.engine.checkpoints import LEGACY_STATE_SUFFIX, POINTER, STATE_SUFFIX, TAG
from mobilenets.errors import ConfigError

LOCK = ".mobilenets.lock"
RUN_FILES = (POINTER, "best.safetensors", "metrics.csv", "curves.png")  # what marks a folder as holding a run
_TEMP = re.compile(r"\..+\.[A-Za-z0-9_]{8}\.tmp")  # tempfile.mkstemp(prefix=".<name>.", suffix=".tmp")


class RunFolderError(ConfigError):
    """A run folder that is in use, or holds a run that this command would overwrite."""


def _own_checkpoints(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    suffixes = (".safetensors", STATE_SUFFIX, LEGACY_STATE_SUFFIX)
    found = []
    for p in folder.iterdir():
        for suffix in suffixes:
            if p.name.endswith(suffix) and TAG.fullmatch(p.name[: -len(suffix)]):
                found.append(p)
                break
    return sorted(found)


def existing_run(out: Path) -> list[str]:
    """The files that show ``out`` already holds a run (empty when it does not)."""
    found = [name for name in RUN_FILES if (out / name).exists()]
    found += [f"checkpoints/{p.name}" for p in _own_checkpoints(out / "checkpoints")]
    return found


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Delete the temporary files of interrupted atomic writes in ``out`` and ``out/checkpoints``."""
    removed = []
    for folder in (out, out / "checkpoints"):
        if folder.is_dir():
            for p in folder.iterdir():
                if _TEMP.fullmatch(p.name) and p.is_file() and not p.is_symlink():
                    p.unlink(missing_ok=True)
                    removed.append(p)
    return removed


def _remove_previous_run(out: Path) -> None:
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for p in _own_checkpoints(out / "checkpoints"):
        p.unlink(missing_ok=True)
    if (out / "tb").is_dir() and not (out / "tb").is_symlink():
        shutil.rmtree(out / "tb")


@contextlib.contextmanager
def claim(out: str | Path, resuming: bool, overwrite: bool = False) -> Iterator[Path]:
    """Hold ``out`` for one run: create it, lock it (or fail naming the holder), refuse to start a new run over an
    existing one unless ``overwrite``, and clean stale temporaries. The lock is released on exit."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise RunFolderError(f"cannot create the run folder {out}: {e.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RunFolderError(
                f"{out} is being written by another mobilenets process (pid {holder}); wait for it to finish or "
                "choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        if not resuming:
            found = existing_run(out)
            if found and not overwrite:
                shown = ", ".join(found[:4]) + (" ..." if len(found) > 4 else "")
                raise RunFolderError(
                    f"{out} already holds a run ({shown}); continue it with --resume {out}, start again there "
                    "with --overwrite, or choose another --out"
                )
            if found:
                _remove_previous_run(out)
        remove_stale_temporaries(out)
        yield out
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def free_path(path: Path) -> Path:
    """``path`` if nothing is there, else the first of ``stem-2.suffix``, ``stem-3.suffix`` … that is free."""
    candidate, n = path, 1
    while candidate.exists() or candidate.is_symlink():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate
