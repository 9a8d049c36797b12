"""Images/second of a full AAL training step fed by the naive and the packed input pipelines.

One step = input batch -> ResNet18 features -> AAL heads (``aal_k8s.heads.head_losses``: one primary
and one auxiliary head behind gradient reversal, lambda 0.3) -> backward -> Adam. Fed by:

  naive     PIL decode + torchvision transforms (random crop, resize, flip, normalise) in
            DataLoader worker processes, fp32, NCHW model (the usual ImageFolder recipe)
  packed    the project's pipeline (aal_k8s.data.pipeline): a uint8 pack resident in device
            memory, crop/flip/resize/normalise on the device, channels_last; fp32 and bf16 autocast

Evaluation throughput (forward only, no augmentation) is measured the same way. From the measured
numbers it prints the projected device-hours of the whole CelebA protocol: 40 single + 780
pairwise + 1 multi + 40 x 5 adversarial runs, each 6 epochs of 162,770 train images, a validation
pass (19,867) per epoch and one test pass (19,962).

The images are generated JPEGs in a temporary folder (no dataset needed):

    python benchmarks/bench_input_pipeline.py                       # small CPU run (64x64)
    python benchmarks/bench_input_pipeline.py --size celeba         # 218x178 -> 224, on a GPU
    python benchmarks/bench_input_pipeline.py --append BENCHMARKS.md
    python benchmarks/bench_input_pipeline.py --size celeba --compile both --json p.json   # + compiled, side by side

``--size celeba-tiny`` keeps CelebA's stored 218x178 images but feeds the model 32x32 batches of 4:
the same code path in seconds on a CPU (the GPU campaign's dry run).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
import types

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from aal_k8s.data import LoadedDataset  # noqa: E402
from aal_k8s.data.common import IMAGENET_MEAN, IMAGENET_STD, Part  # noqa: E402
from aal_k8s.data.pack import build_pack, fetch  # noqa: E402
from aal_k8s.data.pipeline import InputPipeline  # noqa: E402
from aal_k8s.heads import head_coefficients, head_losses  # noqa: E402
from aal_k8s.model import AttributeNet  # noqa: E402

CELEBA = {"train": 162_770, "val": 19_867, "test": 19_962}
EPOCHS = 6
RUNS = {"single": 40, "pairwise": 40 * 39 // 2, "multi": 1, "adversarial": 40 * 5}
CROP = 0.9
# the fused head operator when this checkout has it (aal_k8s.ops), else the pure-PyTorch reference
HEADS_IMPL = "auto" if importlib.util.find_spec("aal_k8s.ops") else "reference"

SIZES = {  # (height, width) of the stored images, model input side, default batch
    "small": ((64, 64), 64, 32),
    "celeba": ((218, 178), 224, 256),
    "celeba-tiny": ((218, 178), 32, 4),
}


def make_jpegs(folder: str, n: int, hw: tuple[int, int], seed: int = 0) -> list[str]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(n):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((hw[1], hw[0]), Image.BILINEAR)
        noise = rng.integers(-12, 13, (hw[0], hw[1], 3))
        img = Image.fromarray(np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8))
        p = os.path.join(folder, f"{i:06d}.jpg")
        img.save(p, quality=90)
        paths.append(p)
    return paths


class NaiveDataset(torch.utils.data.Dataset):
    def __init__(self, paths, labels, out: int, hw):
        from torchvision import transforms as T

        self.paths, self.labels = paths, labels
        self.tf = T.Compose([
            T.RandomCrop((int(hw[0] * CROP), int(hw[1] * CROP))),
            T.Resize((out, out)),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])  # fmt: skip

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            return self.tf(im.convert("RGB")), self.labels[i]


def make_model(device, channels_last: bool):
    model = AttributeNet("resnet18", "none", ["a", "aux"]).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    fused = True if device.type == "cuda" else None
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=5e-4, fused=fused)
    return model, opt


def step(model, opt, x, y, w, c, bf16: bool, device):
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        h = model.features(x)
    loss, _ = head_losses(h, model.head_weight, model.head_bias, y, w, c, impl=HEADS_IMPL)
    opt.zero_grad(set_to_none=True)
    loss.sum().backward()
    opt.step()
    return loss.detach()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(make_batches, fn, device, warmup: int, steps: int) -> float:
    """Images/second of ``fn(x, y)`` over ``steps`` batches after ``warmup`` batches of a fresh
    iterator (a naive DataLoader's workers start in the warm-up and stop afterwards, so they never
    run in the background of another pipeline's measurement)."""
    it = iter(make_batches())
    for _ in range(warmup):
        x, y = next(it)
        fn(x, y)
    sync(device)
    t0, n = time.perf_counter(), 0
    for _ in range(steps):
        x, y = next(it)
        fn(x, y)
        n += x.shape[0]
    sync(device)
    rate = n / (time.perf_counter() - t0)
    del it
    return rate


def cycle(make):
    while True:
        yield from make()


@torch.no_grad()
def forward_only(model, x, bf16: bool, device):
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        return model(x)


def bench(args) -> dict:
    load = os.getloadavg()[0]
    device = torch.device(args.device)
    hw, out, default_batch = SIZES[args.size]
    bs = args.batch or default_batch
    tmp = tempfile.mkdtemp(prefix="aal-bench-")
    paths = make_jpegs(os.path.join(tmp, "img"), args.images, hw)
    labels = (np.random.default_rng(1).random((args.images, 2)) < 0.5).astype(np.uint8)
    labels_t = torch.from_numpy(labels.astype(np.float32))
    w, c = head_coefficients(1, 1, 0.3, device=device)
    variants = {}  # name -> (train batches, train step, eval batches, eval forward)

    # (1) naive: PIL decode + transforms in DataLoader workers, fp32, NCHW
    ds = NaiveDataset(paths, labels_t, out, hw)
    pin = device.type == "cuda"

    def naive_loader(shuffle, batch):
        return torch.utils.data.DataLoader(
            ds, batch_size=batch, shuffle=shuffle, num_workers=args.workers, pin_memory=pin, drop_last=True,
            persistent_workers=False, prefetch_factor=4 if args.workers else None,
        )  # fmt: skip

    def to_dev(batches):
        for x, y in batches:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    train_loader, eval_loader = naive_loader(True, bs), naive_loader(False, args.eval_batch)
    model, opt = make_model(device, channels_last=False)
    variants["naive fp32 NCHW (PIL + DataLoader)"] = (
        lambda: to_dev(cycle(lambda: train_loader)),
        lambda x, y, model=model, opt=opt: step(model, opt, x, y, w, c, False, device),
        lambda: to_dev(cycle(lambda: eval_loader)),
        lambda x, y, model=model: forward_only(model, x, False, device),
        model,
    )

    # (2) packed: build a pack from the same JPEGs, fetch it, keep it resident on the device
    mod = types.SimpleNamespace(
        NAME="bench", ATTRIBUTES=["a", "aux"], IMAGE_SIZE=hw, RESIZE=False, LAYOUT="generated JPEGs",
        read_source=lambda root, strict: {"train": Part([os.path.relpath(p, tmp) for p in paths], labels, root=tmp)},
    )  # fmt: skip
    from aal_k8s.store import LocalStore

    t0 = time.perf_counter()
    build_pack(mod, tmp, LocalStore(os.path.join(tmp, "store")), "packs/bench", strict=False, workers=args.workers,
               log=open(os.devnull, "w"))  # fmt: skip
    pack_seconds = time.perf_counter() - t0
    part = fetch(LocalStore(os.path.join(tmp, "store")), "packs/bench", os.path.join(tmp, "cache")).parts()["train"]
    split = part.split(hw)
    data = LoadedDataset("bench", ["a", "aux"], {"train": split, "val": split, "test": split}, IMAGENET_MEAN, IMAGENET_STD)
    precisions = [False, True] if device.type == "cpu" or args.fp32_gpu else [True]
    compiled = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    for bf16, comp in [(b, c) for b in precisions for c in compiled]:
        pipe = InputPipeline(data, [0, 1], device, out_size=out, crop=CROP, flip=True, bf16=bf16, splits=("train",))
        model, opt = make_model(device, channels_last=True)
        if comp:
            model.features = torch.compile(model.features, backend=args.compile_backend)
        gen = torch.Generator().manual_seed(0)
        name = f"packed {'bf16' if bf16 else 'fp32'} channels_last{' compiled' if comp else ''} (resident on {device.type})"
        variants[name] = (
            lambda pipe=pipe, gen=gen: cycle(lambda: pipe.train_batches(bs, gen, epoch=1)),
            lambda x, y, model=model, opt=opt, bf16=bf16: step(model, opt, x, y, w, c, bf16, device),
            lambda pipe=pipe: cycle(lambda: pipe.eval_batches("train", args.eval_batch)),
            lambda x, y, model=model, bf16=bf16: forward_only(model, x, bf16, device),
            model,
        )

    # rounds interleave the pipelines, so a change of load on a shared machine hits them all;
    # each number is the best of the rounds
    rates = {k: {name: [] for name in variants} for k in ("input", "train", "eval")}
    failures = {}  # a pipeline that raises (a DataLoader worker killed, a compile error) is dropped
    partial = {"device": device, "batch": bs, "hw": hw, "out": out, "pack_seconds": pack_seconds, "load": load,
               "failures": failures}  # fmt: skip
    for r in range(args.repeats):
        warm = args.warmup if r == 0 else max(1, args.warmup // 2)
        for name, (tb, tstep, eb, efwd, model) in variants.items():
            if name in failures:
                continue
            try:
                got_input = timed(tb, lambda x, y: None, device, warm, args.input_steps)
                model.train()
                got_train = timed(tb, tstep, device, warm, args.steps)
                model.eval()
                got_eval = timed(eb, efwd, device, 1, args.eval_steps)
            except Exception as e:  # noqa: BLE001 - reported in the output; the other pipelines go on
                failures[name] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
                print(f"round {r + 1}: {name}: FAILED {failures[name]}", file=sys.stderr)
                continue
            rates["input"][name].append(got_input)
            rates["train"][name].append(got_train)
            rates["eval"][name].append(got_eval)
            print(f"round {r + 1}: {name}: input {rates['input'][name][-1]:.1f}, train {rates['train'][name][-1]:.1f}, "
                  f"eval {rates['eval'][name][-1]:.1f} images/s", file=sys.stderr)  # fmt: skip
            if args.json:  # after every measurement, so a run stopped early keeps what it measured
                write_json({**partial, "rates": rates, "load_end": os.getloadavg()[0]}, args, args.json)
    return {**partial, "rates": rates, "load_end": os.getloadavg()[0]}


def projection_hours(train_ips: float, eval_ips: float) -> float:
    runs = sum(RUNS.values())
    per_run = EPOCHS * CELEBA["train"] / train_ips + (EPOCHS * CELEBA["val"] + CELEBA["test"]) / eval_ips
    return runs * per_run / 3600.0


def summarise(r: dict) -> dict:
    """Per pipeline: best and median images/s of each measurement, the ratio of its train rate to
    the naive one, and the projected protocol device-hours (from the best and the median rates)."""
    naive = "naive fp32 NCHW (PIL + DataLoader)"
    out = {}
    for name, train in r["rates"]["train"].items():
        if not train:
            continue
        best = {k: max(r["rates"][k][name]) for k in ("input", "train", "eval")}
        med = {k: float(np.median(r["rates"][k][name])) for k in ("input", "train", "eval")}
        base = r["rates"]["train"].get(naive) or []
        out[name] = {
            "best": best,
            "median": med,
            "train_vs_naive": best["train"] / max(base) if base else None,
            "projected_hours": projection_hours(best["train"], best["eval"]),
            "projected_hours_median": projection_hours(med["train"], med["eval"]),
        }
    return out


def write_json(r: dict, args, path: str) -> None:
    import json

    doc = {
        "device": device_name(r["device"]),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "size": args.size,
        "images": args.images,
        "batch": r["batch"],
        "input": f"{r['hw'][0]}x{r['hw'][1]} -> {r['out']}",
        "heads_impl": HEADS_IMPL,
        "compile": args.compile,
        "compile_backend": args.compile_backend,
        "pack_seconds": r["pack_seconds"],
        "failures": r.get("failures", {}),
        "rates": r["rates"],
        "summary": summarise(r),
    }
    with open(path + ".tmp", "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(path + ".tmp", path)


def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    cores = len(os.sched_getaffinity(0))
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU ({model}), {cores} cores, {torch.get_num_threads()} torch threads"


def report(r: dict, args) -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or "unknown"  # fmt: skip
    except OSError:
        commit = "unknown"
    dev = r["device"]
    lines = [
        f"## Input pipeline: naive vs packed ({args.size}, {dev.type})",
        "",
        f"- device: {device_name(dev)}",
        f"- date: {datetime.date.today().isoformat()}, torch {torch.__version__}, git commit {commit}",
        f"- images: {args.images} generated JPEGs {r['hw'][0]}x{r['hw'][1]} (h x w), model input {r['out']}x{r['out']}, "
        f"batch {r['batch']}, ResNet18 + 2 AAL heads (head_losses, impl={HEADS_IMPL}) + Adam, {args.steps} timed steps after "
        f"{args.warmup} warm-up steps (later rounds {max(1, args.warmup // 2)}) on a fresh iterator, naive DataLoader "
        f"workers: {args.workers}; torch.compile of the packed model's features: {args.compile}"
        f"{'' if args.compile == 'off' else ' (backend ' + args.compile_backend + ')'}",
        f"- pack build (decode {args.images} JPEGs once): {r['pack_seconds']:.1f} s; host load average "
        f"(1 min): {r['load']:.1f} at the start, {r['load_end']:.1f} at the end, on {len(os.sched_getaffinity(0))} cores",
        f"- each cell: best (median) of {args.repeats} interleaved rounds; input only = {args.input_steps} batches "
        "produced and delivered to the device without a model step (the pipeline's capacity)",
        "",
        "| pipeline | input only images/s | train step images/s | vs naive | eval images/s | projected CelebA protocol (device-hours) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    best = {k: {n: max(v) for n, v in d.items() if v} for k, d in r["rates"].items()}
    median = {k: {n: float(np.median(v)) for n, v in d.items() if v} for k, d in r["rates"].items()}
    naive = "naive fp32 NCHW (PIL + DataLoader)"
    for name in best["train"]:
        cells = []
        for key in ("input", "train"):
            cells.append(f"{best[key][name]:,.1f} ({median[key][name]:,.1f})")
        if naive in best["train"]:
            cells.append(f"{best['train'][name] / best['train'][naive]:.2f}x "
                         f"({median['train'][name] / median['train'][naive]:.2f}x)")  # fmt: skip
        else:
            cells.append("– (naive failed)")
        cells.append(f"{best['eval'][name]:,.1f} ({median['eval'][name]:,.1f})")
        cells.append(f"{projection_hours(best['train'][name], best['eval'][name]):,.0f} "
                     f"({projection_hours(median['train'][name], median['eval'][name]):,.0f})")  # fmt: skip
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [f"| {name} | FAILED: {msg} | | | | |" for name, msg in r.get("failures", {}).items()]
    lines += [
        "",
        f"Projection: {sum(RUNS.values())} runs (40 single + 780 pairwise + 1 multi + 200 adversarial), each "
        f"{EPOCHS} epochs x {CELEBA['train']:,} train images + {EPOCHS} x {CELEBA['val']:,} val + {CELEBA['test']:,} "
        "test images, at the measured rates (pack download and model set-up not included).",
    ]
    if args.size != "celeba":
        lines.append(
            f"At {r['hw'][0]}x{r['hw'][1]} -> {r['out']} images, not CelebA's 218x178 -> 224: the projection is "
            f"of this device at this size, a lower bound on the real cost (about {(224 / r['out']) ** 2:.0f}x the pixels at 224)."
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default=None, help="small (CPU default) | celeba (GPU default)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--images", type=int, default=None, help="generated JPEGs (default 256 small, 4096 celeba)")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--eval-batch", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="timed training steps per pipeline")
    p.add_argument("--eval-steps", type=int, default=None)
    p.add_argument("--input-steps", type=int, default=None, help="batches timed without a model step")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the best of them is reported")
    p.add_argument("--workers", type=int, default=min(8, len(os.sched_getaffinity(0))), help="naive DataLoader workers")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--compile", nargs="?", const="on", default="off", choices=["off", "on", "both"],
                   help="torch.compile the packed model's features (both: each packed pipeline with and without)")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (eager/aot_eager: tracing only)")
    p.add_argument("--fp32-gpu", action="store_true", help="also time the packed pipeline in fp32 on a GPU")
    p.add_argument("--append", metavar="FILE", help="append the Markdown section to FILE (e.g. BENCHMARKS.md)")
    p.add_argument("--markdown", metavar="FILE", help="write the Markdown section to FILE")
    p.add_argument("--json", metavar="FILE", help="write the rates and their summary as JSON to FILE")
    args = p.parse_args(argv)
    gpu = args.device.startswith("cuda")
    args.size = args.size or ("celeba" if gpu else "small")
    args.images = args.images or {"celeba": 4096, "celeba-tiny": 16}.get(args.size, 256)
    args.steps = args.steps or (50 if gpu else 4)
    args.eval_steps = args.eval_steps or (20 if gpu else 3)
    args.input_steps = args.input_steps or (200 if gpu else 64)  # far more than a DataLoader prefetches
    args.warmup = args.warmup if args.warmup is not None else (10 if gpu else 1)
    args.eval_batch = args.eval_batch or (512 if gpu else 64)
    if args.threads:
        torch.set_num_threads(args.threads)
    r = bench(args)
    text = report(r, args)
    print(text)
    if args.append:
        with open(args.append, "a") as f:
            f.write("\n" + text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    if args.json:
        write_json(r, args, args.json)
    if r["failures"]:  # the others were measured and written; the run still did not do its job
        print(f"failed pipelines: {r['failures']}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
