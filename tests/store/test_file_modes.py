"""Files the store and the CLI write are as readable as the umask says (not mkstemp's 0600)."""

import os
import stat

import pytest

from aal_k8s.store import LocalStore
from aal_k8s.store.base import atomic_write


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda m: os.umask(m)
    os.umask(old)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_store_files_and_local_outputs_get_0666_less_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    store = LocalStore(str(tmp_path / "store"))
    store.put_bytes("exp/report/report.md", b"# report")
    assert store.put_if_absent("exp/runs/r/metrics.json", b"{}")
    atomic_write(str(tmp_path / "report.md"), b"# report")
    for path in (tmp_path / "store/exp/report/report.md", tmp_path / "store/exp/runs/r/metrics.json", tmp_path / "report.md"):
        assert stat.S_IMODE(os.stat(path).st_mode) == mode, path
