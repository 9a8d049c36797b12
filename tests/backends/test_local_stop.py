"""Ctrl-C or SIGTERM stops a local stage at once: running workers stopped, queued runs never
started, nothing committed, exit 130 (SIGTERM: 143)."""

import os
import signal
import subprocess
import sys
import time

import pytest

DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "local_stop_driver.py")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize(
    "command, sig, code, said",
    [
        (["submit", "--stage", "single"], signal.SIGINT, 130, "aal-k8s: interrupted"),
        (["submit", "--stage", "single"], signal.SIGTERM, 143, "aal-k8s: terminated"),
        (["pipeline"], signal.SIGTERM, 143, "aal-k8s: terminated"),
    ],
    ids=["submit Ctrl-C", "submit SIGTERM", "pipeline SIGTERM"],
)
def test_a_signal_stops_the_stage_at_once_and_no_queued_run_starts(tmp_path, command, sig, code, said):
    started = tmp_path / "started"
    started.mkdir()
    store = tmp_path / "store"
    argv = [sys.executable, DRIVER, str(started), "--", *command, "--store", str(store), "--set", "executor.parallel=2"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120  # a synchronisation point, not a measurement
        while len(os.listdir(started)) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(os.listdir(started)) == 2, proc.poll()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)  # the fake workers would sleep 600 s
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for name in os.listdir(started):
            if _alive(int(name)):
                os.kill(int(name), signal.SIGKILL)
    err = err.decode()
    assert proc.returncode == code and said in err and "Traceback" not in err
    pids = [int(n) for n in os.listdir(started)]
    assert len(pids) == 2  # the 4 queued runs of the 6 never started
    assert not any(_alive(p) for p in pids)
    committed = [f for _, _, fs in os.walk(store) for f in fs if f == "metrics.json"]
    assert not committed and not (store / "synthetic" / "reduce").exists()
