"""The run's lock: one train.py at a time holds runs/<name>/.

The lock is the operating system's (flock on Linux and macOS, msvcrt on Windows), which it releases
when the holder dies, however it dies; the lock file's text names the holder, so that a refusal can
say who it is, and a lock left by a killed process is seen as free and taken over.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path


class RunInUse(RuntimeError):
    """Another process holds the run's lock."""


class RunLock:
    """`with RunLock(run_dir):` holds runs/<name>/lock for the block, or raises RunInUse.

    The lock is the operating system's (flock on Linux and macOS, msvcrt on Windows), which it
    releases when the holder dies, however it dies; the file's text names the holder, so a refusal
    can say who it is, and a lock left by a killed process is seen as free and taken over.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "lock"

    def __enter__(self) -> "RunLock":
        self.file = open(self.path, "a+")
        try:
            _lock_file(self.file)
        except OSError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise RunInUse(f"run {self.path.parent} is in use by {holder} (its lock file {self.path}); "
                           f"wait for it to finish or stop it, or train another run with --name NEW") from None
        self.file.seek(0)
        previous = self.file.read().strip()
        if previous:
            print(f"taking over {self.path}: {previous} {_why_free(previous)}")
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"process {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M')}\n")
        self.file.flush()
        return self

    def __exit__(self, *exception) -> None:
        self.file.seek(0)
        self.file.truncate()  # empty: no holder
        self.file.flush()
        _unlock_file(self.file)
        self.file.close()


def _why_free(holder: str) -> str:
    """Why a lock file that names `holder` ("process N on HOST since ...") is free: N ended, or N runs
    on and holds another copy of this file (the run folder was copied, its lock file with it)."""
    words = holder.split()
    if os.name == "nt" or len(words) < 4 or not words[1].isdigit() or words[3] != socket.gethostname():
        return "ended without releasing it"  # (on Windows os.kill would end the process, not ask about it)
    try:
        os.kill(int(words[1]), 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return "ended without releasing it"
    except PermissionError:  # it exists, under another user
        pass
    return "is still running but does not hold this lock: the run folder was copied, with its lock file"


if os.name == "nt":
    import msvcrt

    def _lock_file(file) -> None:
        file.seek(0)
        msvcrt.locking(file.fileno(), msvcrt.LK_NBLCK, 1)

    def _unlock_file(file) -> None:
        file.seek(0)
        msvcrt.locking(file.fileno(), msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _lock_file(file) -> None:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock_file(file) -> None:
        fcntl.flock(file.fileno(), fcntl.LOCK_UN)
