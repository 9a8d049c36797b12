"""A store in a local folder (the embedded default): one file per key, atomic renames."""

from __future__ import annotations

import os
import time

from aal_k8s.errors import StoreError
from aal_k8s.store.base import Store, atomic_write, write_temp


class LocalStore(Store):
    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.uri = self.root

    def _path(self, key: str) -> str:
        norm = os.path.normpath(key)
        if norm.startswith("..") or os.path.isabs(norm):
            raise StoreError(f"store key {key!r} escapes the store root {self.root}")
        return os.path.join(self.root, norm)

    def put_bytes(self, key: str, data: bytes) -> None:
        atomic_write(self._path(key), data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Write a complete temp file, then ``os.link`` it to the key: the link fails when the key
        exists, so of concurrent writers exactly one wins and nobody sees a partial file."""
        path = self._path(key)
        tmp = write_temp(os.path.dirname(path), data)
        try:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            except OSError:  # no hard links here (some FUSE/SMB mounts): exclusive create instead
                try:
                    fd2 = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(fd2, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            return True
        finally:
            os.unlink(tmp)

    def get_bytes(self, key: str) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise StoreError(f"{self.url(key)}: not found") from None

    def exists(self, key: str) -> bool:
        return os.path.isfile(self._path(key))

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix) if prefix else self.root
        out = []
        for folder, _, files in os.walk(base):
            for name in files:
                if name.startswith(".part-"):
                    continue
                rel = os.path.relpath(os.path.join(folder, name), self.root)
                out.append(rel.replace(os.sep, "/"))
        return sorted(out)

    def list_sizes(self, prefix: str) -> dict[str, int]:
        out = {}
        for k in self.list(prefix):
            try:
                out[k] = os.path.getsize(self._path(k))
            except FileNotFoundError:
                pass  # deleted meanwhile
        return out

    def temp_files(self, prefix: str, older_than: float) -> dict[str, int]:
        base = self._path(prefix) if prefix else self.root
        now = time.time()
        out = {}
        for folder, _, files in os.walk(base):
            for name in files:
                if not name.startswith(".part-"):
                    continue
                path = os.path.join(folder, name)
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue
                if now - st.st_mtime >= older_than:
                    out[os.path.relpath(path, self.root).replace(os.sep, "/")] = st.st_size
        return dict(sorted(out.items()))

    def delete(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass
