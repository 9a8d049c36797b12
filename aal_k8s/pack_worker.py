"""Execute a pack of runs in one process (``aal-k8s worker --run A --run B ...``; aal_k8s.packs).

Each member goes through what ``aal_k8s.worker`` does for one run: a committed member (or one at
the halving rung) is skipped, a commit record that fails verification is moved aside, every epoch
writes the member's own checkpoint under this attempt, a restarted pack resumes each member from
its newest checkpoint (members at different epochs: the ones behind catch up first), and each
member commits as a run trained alone would. The attempt's log is copied to every member's
attempt folder. Exit codes as the worker's: 0 every member committed (or at the rung), 2 bad
input, 1 anything else (a retry resumes from the checkpoints).
"""

from __future__ import annotations

import io
import sys
import time
import traceback

from aal_k8s.errors import AALError
from aal_k8s.worker import (
    ATTEMPT_LOG,
    EXIT_CRASH,
    EXIT_USAGE,
    _Scrubbed,
    _Tee,
    _threads,
    commit_result,
    load_checkpoint,
    nothing_to_do,
    open_experiment,
    read_spec,
    record_failure,
)


def execute_pack(store_uri: str, experiment: str, run_ids: list[str], log=None, until_epoch: int = 0) -> int:
    raw = log if log is not None else sys.stderr
    log = _Scrubbed(raw)
    from aal_k8s.store.layout import check_name

    try:
        for run_id in run_ids:
            check_name("run id", run_id)
        if len(set(run_ids)) != len(run_ids):
            raise AALError(f"--run: a run is given twice in the pack {', '.join(run_ids)}")
        exp, options = open_experiment(store_uri, experiment)
    except AALError as e:
        print(f"pack {', '.join(run_ids)}: failed: {e.message}", file=log)
        return e.exit_code
    tee = _Tee(raw)
    todo: list[str] = []
    try:
        todo = [r for r in run_ids if not nothing_to_do(exp, r, _Scrubbed(tee), until_epoch)]
        if not todo:
            return 0
        return _train_pack_and_commit(exp, [read_spec(exp, r) for r in todo], _Scrubbed(tee), options, until_epoch)
    except AALError as e:
        code = e.exit_code if e.exit_code in (EXIT_USAGE, EXIT_CRASH) else EXIT_USAGE
        for r in todo:
            record_failure(exp, r, e.message, code, _Scrubbed(tee))
        return code
    except Exception as e:
        print(traceback.format_exc(), file=_Scrubbed(tee))
        for r in todo:
            record_failure(exp, r, f"{type(e).__name__}: {e}", EXIT_CRASH, _Scrubbed(tee))
        return EXIT_CRASH
    finally:  # also on KeyboardInterrupt / SystemExit: every member's attempt keeps the log
        for r in run_ids:
            try:
                exp.store.put_bytes(exp.attempt_key(r, ATTEMPT_LOG), tee.text().encode())
            except Exception as e:  # the store itself may be what failed
                print(f"run {r}: could not copy the log to the store: {e}", file=log)


def _train_pack_and_commit(exp, specs, log, options, until_epoch: int) -> int:
    started = time.perf_counter()
    import torch

    from aal_k8s.config import config_from_dict
    from aal_k8s.data import load_dataset
    from aal_k8s.halving import write_rung
    from aal_k8s.packs import check_pack, train_pack

    check_pack(specs)  # before the dataset is loaded: a bad pack is one line, exit 2
    cfg = config_from_dict(specs[0].config)
    torch.set_num_threads(_threads(cfg.train.threads))
    for s in specs:
        print(f"run {s.describe()} (pack of {len(specs)})", file=log)
    data = load_dataset(cfg.dataset, store=exp.store)
    for s in specs:
        missing = [a for a in s.heads if a not in data.attributes]
        if missing:
            raise AALError(f"run {s.run_id}: dataset {s.dataset!r} has no attribute(s) {missing}")
    if until_epoch >= cfg.train.epochs:
        until_epoch = 0  # the last rung is the full run: train to the end and commit
    resume = {s.run_id: st for s in specs if (st := load_checkpoint(exp, s, log)) is not None}
    by_id = {s.run_id: s for s in specs}

    def progress(run_id: str, epoch: int, entry: dict) -> None:
        acc = " ".join(f"{k}={v:.4f}" for k, v in entry["val_acc"].items())
        print(f"run {run_id}: epoch {epoch} lr={entry['lr']:g} val {acc} ({entry['seconds']:.1f}s)", file=log)

    def checkpoint(run_id: str, state: dict) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        exp.write_checkpoint(run_id, state["epoch"], buf.getvalue(), keep=options.checkpoint_keep)
        if until_epoch and state["epoch"] == until_epoch:  # after the checkpoint: the next rung resumes from it
            write_rung(exp, run_id, until_epoch, state["history"], float(state["timings"].get("total", 0.0)))
            print(f"run {run_id}: reached halving rung epoch {until_epoch}; stopping here", file=log)

    if until_epoch:  # a crash between a member's rung checkpoint and its record
        for run_id, st in list(resume.items()):
            if int(st["epoch"]) >= until_epoch:
                write_rung(exp, run_id, until_epoch, st["history"], float(st["timings"].get("total", 0.0)))
                del resume[run_id]
                specs = [s for s in specs if s.run_id != run_id]
        if not specs:
            return 0
    results = train_pack(specs, data, on_epoch_end=progress, resume_states=resume, on_checkpoint=checkpoint,
                         until_epoch=until_epoch)  # fmt: skip
    code = 0
    for r in results:
        code = max(code, commit_result(exp, by_id[r.run_id], r, started, log, members=len(results)))
    return code
