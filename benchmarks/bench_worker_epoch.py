"""One real AAL training run through the worker's code path, on a generated CelebA-layout dataset.

What a Kubernetes pod does for one adversarial run, on this machine: ``aal-k8s prepare`` decodes a
generated folder in CelebA's official layout (218x178 JPEGs, list_attr_celeba.txt,
list_eval_partition.txt) into a pack in a local store; the run's spec (Smiling, with
Mouth_Slightly_Open behind gradient reversal, lambda 0.3; ResNet18, the config's batch size and
precision) is written to the store; ``python -m aal_k8s worker`` (a separate process, as in a pod)
fetches the pack, trains, checkpoints every epoch and commits. The metrics it committed give the
seconds of each epoch (train + validation), from which the script reports images/s and projects
the whole CelebA protocol (the formula of bench_input_pipeline.py), plus the per-run fixed cost
(process start, pack load, model set-up: worker wall time minus its training and evaluation).

    python benchmarks/bench_worker_epoch.py                                   # GPU: 16,384 train images, 2 epochs
    python benchmarks/bench_worker_epoch.py --device cpu --train 16 --val 8 --test 8 --epochs 1 \\
        --image-size 32 --batch-size 8                                        # seconds on a CPU
    python benchmarks/bench_worker_epoch.py --json worker.json --markdown worker.md

Epoch 1 carries the one-time costs (cuDNN autotuning, allocator growth); with 2 or more epochs the
last one is the steady-state figure. The images repeat a pool of distinct pictures (hard links),
so generating 20k files takes seconds; every file is still decoded once by ``prepare``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from aal_k8s.data import celeba  # noqa: E402

PRIMARY, PARTNER, LAMBDA = "Smiling", "Mouth_Slightly_Open", 0.3
POOL = 64  # distinct pictures; the rest of the files are hard links to them


def make_celeba_folder(root: str, counts: tuple[int, int, int], seed: int = 0) -> None:
    """img_align_celeba/ + list_attr_celeba.txt + list_eval_partition.txt with sum(counts) images."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    img_dir = os.path.join(root, celeba.IMAGE_DIR)
    os.makedirs(img_dir, exist_ok=True)
    h, w = celeba.IMAGE_SIZE
    n = sum(counts)
    files = [f"{i:06d}.jpg" for i in range(1, n + 1)]
    for i, name in enumerate(files):
        path = os.path.join(img_dir, name)
        if i < POOL:
            small = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
            img = Image.fromarray(small).resize((w, h), Image.BILINEAR)
            noise = rng.integers(-10, 11, (h, w, 3))
            img = Image.fromarray(np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8))
            img.save(path, quality=90)
        else:
            os.link(os.path.join(img_dir, files[i % POOL]), path)
    values = np.where(rng.random((n, len(celeba.ATTRIBUTES))) < 0.4, 1, -1)
    with open(os.path.join(root, celeba.ATTR_FILE), "w") as f:
        f.write(f"{n}\n" + " ".join(celeba.ATTRIBUTES) + " \n")
        for name, row in zip(files, values):
            f.write(name + " " + " ".join(f"{v:2d}" for v in row) + "\n")
    with open(os.path.join(root, celeba.PARTITION_FILE), "w") as f:
        split = 0
        for i, name in enumerate(files):
            while i >= sum(counts[: split + 1]):
                split += 1
            f.write(f"{name} {split}\n")


def _run(cmd: list[str], log_path: str, env: dict | None = None) -> float:
    t0 = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        with open(log_path, errors="replace") as f:
            tail = f.read()[-3000:]
        raise SystemExit(f"{' '.join(cmd[1:4])}... exited {proc.returncode}:\n{tail}")
    return seconds


def bench(args) -> dict:
    import torch

    from aal_k8s.config import load_config
    from aal_k8s.planner import plan_stage
    from aal_k8s.store import ExperimentStore, open_store

    work = args.workdir or tempfile.mkdtemp(prefix="aal-worker-epoch-")
    src, store, cache = (os.path.join(work, d) for d in ("celeba", "store", "cache"))
    counts = (args.train, args.val, args.test)
    t0 = time.perf_counter()
    make_celeba_folder(src, counts)
    gen_seconds = time.perf_counter() - t0

    overrides = [
        f"store.uri={store}",
        f"dataset.cache_dir={cache}",
        "dataset.strict_counts=false",
        "model.pretrained=none",  # no download on a machine without internet; same step cost
        f"model.image_size={args.image_size}",
        f"train.epochs={args.epochs}",
        f"train.device={args.device}",
        f"adversarial.lambdas=[{LAMBDA}]",
        *([f"train.batch_size={args.batch_size}"] if args.batch_size else []),
        *args.overrides,
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    prepare_cmd = [sys.executable, "-m", "aal_k8s", "prepare", "--dataset", "celeba", "--source", src,
                   "--workers", str(args.workers)] + [a for o in overrides for a in ("--set", o)]  # fmt: skip
    prepare_seconds = _run(prepare_cmd, os.path.join(work, "prepare.log"), env)

    cfg = load_config(dataset="celeba", overrides=overrides)
    (spec,) = plan_stage("adversarial", cfg, partners={PRIMARY: PARTNER}, attributes=[PRIMARY])
    exp = ExperimentStore(open_store(store), cfg.experiment_name)
    exp.write_spec(spec)
    worker_cmd = [sys.executable, "-m", "aal_k8s", "worker", "--store", store, "--experiment", exp.experiment,
                  "--run", spec.run_id]  # fmt: skip
    worker_log = os.path.join(work, "worker.log")
    worker_seconds = _run(worker_cmd, worker_log, env)
    metrics = exp.read_metrics(spec.run_id)
    if metrics is None:
        raise SystemExit(f"worker exited 0 but run {spec.run_id} is not committed (see {worker_log})")

    timings, history = metrics["timings"], metrics["history"]
    n_tr, n_val, n_te = counts
    epochs = len(history)
    eval_rate = (epochs * n_val + n_te) / timings["eval"]
    last = history[-1]["seconds"]
    train_last = max(last - n_val / eval_rate, 1e-9)  # the epoch's seconds less its validation pass
    from bench_input_pipeline import RUNS, projection_hours

    fixed_seconds = worker_seconds - timings["total"]
    return {
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device != "cpu" and torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "run_id": spec.run_id,
        "run": spec.describe(),
        "counts": {"train": n_tr, "val": n_val, "test": n_te},
        "image_size": args.image_size,
        "batch_size": cfg.train.batch_size,
        "precision": cfg.train.precision,
        "heads_impl": cfg.train.heads_impl,
        "input": metrics["environment"].get("input", ""),
        "generate_seconds": gen_seconds,
        "prepare_seconds": prepare_seconds,
        "worker_seconds": worker_seconds,
        "epoch_seconds": [e["seconds"] for e in history],
        "timings": timings,
        "train_rate_all_epochs": epochs * n_tr / timings["train"],
        "train_rate_last_epoch": n_tr / train_last,
        "eval_rate": eval_rate,
        "fixed_seconds": fixed_seconds,
        "projected_hours": projection_hours(n_tr / train_last, eval_rate),
        "fixed_hours": sum(RUNS.values()) * fixed_seconds / 3600,
        "val_acc": metrics["val_acc"],
    }


def report(r: dict) -> str:
    from bench_input_pipeline import RUNS

    runs = sum(RUNS.values())
    hours, fixed_hours = r["projected_hours"], r["fixed_hours"]
    c = r["counts"]
    epochs = ", ".join(f"{s:.1f}" for s in r["epoch_seconds"])
    return "\n".join([
        f"## One AAL run through the worker ({r['device_name']})",
        "",
        f"- date: {datetime.date.today().isoformat()}, torch {r['torch']} (CUDA {r['cuda']})",
        f"- run: {r['run']}; ResNet18 (random init), input {r['image_size']}x{r['image_size']}, batch "
        f"{r['batch_size']}, precision {r['precision']}, heads {r['heads_impl']}; {r['input']}",
        f"- generated CelebA layout: {c['train']:,} train / {c['val']:,} val / {c['test']:,} test images of "
        f"218x178 ({r['generate_seconds']:.1f} s); `aal-k8s prepare`: {r['prepare_seconds']:.1f} s",
        f"- worker process: {r['worker_seconds']:.1f} s wall; epochs (train + val): {epochs} s; "
        f"training {r['timings']['train']:.1f} s, evaluation {r['timings']['eval']:.1f} s",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| train images/s, last epoch (val pass removed) | {r['train_rate_last_epoch']:,.0f} |",
        f"| train images/s, all epochs | {r['train_rate_all_epochs']:,.0f} |",
        f"| eval images/s | {r['eval_rate']:,.0f} |",
        f"| per-run fixed cost (worker wall - train - eval), s | {r['fixed_seconds']:.1f} |",
        f"| projected CelebA protocol, device-hours (training + evaluation) | {hours:,.1f} |",
        f"| + per-run fixed cost x {runs} runs, device-hours | {fixed_hours:,.1f} |",
        "",
        "The fixed cost includes loading this run's pack into device memory; the real CelebA pack is "
        f"{202_599 / max(1, sum(c.values())):.0f}x larger, so that share grows with it.",
        "",
    ])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="train.device: auto | cuda | cpu")
    p.add_argument("--train", type=int, default=16_384, help="generated train images")
    p.add_argument("--val", type=int, default=2_048)
    p.add_argument("--test", type=int, default=2_048)
    p.add_argument("--epochs", type=int, default=2, help="the last one is the steady-state figure")
    p.add_argument("--image-size", type=int, default=224, help="model.image_size")
    p.add_argument("--batch-size", type=int, default=0, help="train.batch_size (0 = the config's)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decode processes of prepare")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--workdir", help="where the folder, store and cache go (default: a new temporary folder)")
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--markdown", metavar="FILE")
    args = p.parse_args(argv)
    if min(args.train, args.val, args.test, args.epochs, args.image_size) < 1:
        p.error("--train, --val, --test, --epochs and --image-size must be >= 1")
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    r = bench(args)
    text = report(r)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
