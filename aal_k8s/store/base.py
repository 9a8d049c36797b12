"""The blob-store interface every backend implements: flat keys, whole-object writes."""

from __future__ import annotations

import abc
import os
import tempfile


class Store(abc.ABC):
    """Keys are '/'-separated relative paths. Writes of one key are atomic: a reader sees the old
    object, the new one, or none, never a partial one."""

    uri: str

    @abc.abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    @abc.abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The object's bytes; ``StoreError`` naming the key if it does not exist."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Every key below ``prefix`` (recursive), sorted."""

    @abc.abstractmethod
    def delete(self, key: str) -> None: ...

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create ``key`` only if it does not exist yet; True when this call created it.

        Implementations make this atomic (local: hard link of a complete temp file; S3: a
        conditional PUT with ``If-None-Match: *``). This default is best effort only."""
        if self.exists(key):
            return False
        self.put_bytes(key, data)
        return True

    def put_file(self, key: str, path: str | os.PathLike) -> None:
        with open(path, "rb") as f:
            self.put_bytes(key, f.read())

    def get_file(self, key: str, path: str | os.PathLike) -> None:
        """Download to ``path`` atomically (temp file in the same folder, then rename)."""
        atomic_write(os.fspath(path), self.get_bytes(key))

    def url(self, key: str) -> str:
        """Where ``key`` lives, for messages."""
        return f"{self.uri.rstrip('/')}/{key}"


def _umask() -> int:
    """The process umask, read without setting it (``os.umask`` sets it process-wide, which would
    race with files other threads create); the import-time value where /proc is unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return _IMPORT_UMASK


_IMPORT_UMASK = os.umask(0o022)
os.umask(_IMPORT_UMASK)


def write_temp(folder: str, data: bytes) -> str:
    """A complete, fsynced temp file holding ``data`` in ``folder`` (created if needed); its path.
    Its mode is what ``open`` would give (0666 less the umask), not mkstemp's 0600: a team sharing
    a store folder can read the report, manifests and models."""
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".part-")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def atomic_write(path: str, data: bytes) -> None:
    tmp = write_temp(os.path.dirname(os.path.abspath(path)), data)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
