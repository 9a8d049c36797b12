"""Forward+backward time of the AAL head computation: eager composition vs torch.compile vs fused op.

    python benchmarks/bench_fused_heads.py                 # CPU (and CUDA when present), print table
    python benchmarks/bench_fused_heads.py --record        # ... and update BENCHMARKS.md
    python benchmarks/bench_fused_heads.py --device cpu --shapes 256x2 --dtypes float32
    python benchmarks/bench_fused_heads.py --device cuda --json fused.json --markdown fused.md

Variants, all computing the same gradients for h, the head weights and the biases:

* ``eager``     what a user would write: a gradient-reversal autograd.Function, one nn.Linear for
                the A primary heads and one behind the GRL for the B auxiliary heads, and
                nn.BCEWithLogitsLoss on each group; ``loss.backward()``.
* ``compile``   the same function under ``torch.compile`` (default mode).
* ``compile-ro`` the same under ``torch.compile(mode="reduce-overhead")`` — CUDA only (CUDA graphs).
* ``reference`` ``aal_k8s.heads.reference_head_losses`` (the fallback when the extension is absent).
* ``fused``     ``aal_k8s.ops.fused_heads`` (the extension); ``loss.sum().backward()``.
* ``graph``     the fused step (forward + backward) captured once in a CUDA graph and replayed —
                CUDA only; what the fused op costs without per-launch host overhead.

Each (dtype, B, K) case starts from a clean torch.compile state (``torch._dynamo.reset()``) and
compiles with ``dynamic=False``: without both, the second shape would recompile into a
dynamic-shape graph (or hit the recompile limit and silently run eagerly), and the compiled
variants would not be what a run with one fixed batch size gets.

Timing: wall clock per iteration (CPU) or CUDA events (GPU), median over many repeats after a
warm-up, with the variants interleaved call by call. Leaf ``.grad`` fields are reset to None before every iteration in every variant so that
no variant pays for gradient accumulation. The machine's load average is printed because other
processes on a small shared host shift CPU timings.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from aal_k8s import heads, ops  # noqa: E402

D = 512
LAMBDA = 0.5


class GradReverse(torch.autograd.Function):
    """The usual GRL: identity forward, gradient multiplied by -lambda backward."""

    @staticmethod
    def forward(ctx, x, lam):
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g.neg() * ctx.lam, None


class EagerHeads(nn.Module):
    def __init__(self, d: int, n_primary: int, n_aux: int, lam: float):
        super().__init__()
        self.n_primary = n_primary
        self.primary = nn.Linear(d, n_primary)
        self.aux = nn.Linear(d, n_aux)
        self.bce_p = nn.BCEWithLogitsLoss()
        self.bce_a = nn.BCEWithLogitsLoss()
        self.lam = lam

    def forward(self, h, y):
        zp = self.primary(h)
        za = self.aux(GradReverse.apply(h, self.lam))
        a = self.n_primary
        return self.bce_p(zp, y[:, :a]) + self.bce_a(za, y[:, a:])


FAILURES: list[str] = []  # "variant: error" of variants dropped from a case (see _time_all)


@dataclass
class Row:
    device: str
    dtype: str
    B: int
    K: int
    times: dict[str, float]  # variant -> median ms
    profile: dict[str, dict] = field(default_factory=dict)  # variant -> per-step launches and kernel time


PROFILE_STEPS = 5


def _profile(fns: dict, device: str) -> dict[str, dict]:
    """Per variant and step, from torch.profiler: on CUDA the kernels launched and their summed
    device time (against the measured step time: the share that is not host or launch overhead);
    on the CPU the operators run and their self CPU time."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    out = {}
    for name, fn in fns.items():
        with profile(activities=activities) as prof:
            for _ in range(PROFILE_STEPS):
                fn()
            _sync(device)
        if device == "cuda":
            events = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
            busy = sum(e.time_range.elapsed_us() for e in events)  # a kernel event's span is its run time
        else:
            events = [e for e in prof.events() if e.device_type == DeviceType.CPU and e.name.startswith("aten::")]
            busy = sum(e.self_cpu_time_total for e in events)
        out[name] = {"events": len(events) / PROFILE_STEPS, "busy_ms": busy / 1e3 / PROFILE_STEPS}
    return out


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time_all(fns: dict, device: str, warmup: int, repeats: int) -> dict[str, float]:
    """Median milliseconds per call of each function.

    The variants are interleaved (one call of each per round) rather than timed one after the
    other, so that a change in machine load during the run shifts all of them alike and the
    ratios stay meaningful on a shared host. A variant that raises during its warm-up (a compile
    or graph-capture failure) is dropped with a note in ``FAILURES`` rather than ending the run.
    """
    for name, fn in list(fns.items()):
        try:
            for _ in range(warmup):
                fn()
            _sync(device)
        except Exception as e:  # noqa: BLE001 - any failure of one variant is reported, not fatal
            FAILURES.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300])
            print(f"warning: variant {FAILURES[-1]}; dropped", file=sys.stderr)
            del fns[name]
    _sync(device)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if device == "cuda":
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                samples[name].append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(v) for name, v in samples.items()}


def _make_case(B: int, K: int, dtype: torch.dtype, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    if K < 2:
        raise ValueError("the benchmark needs K >= 2 (one primary and one auxiliary head)")
    n_primary = (K + 1) // 2
    n_aux = K - n_primary
    model = EagerHeads(D, n_primary, n_aux, LAMBDA).to(device=device, dtype=dtype)
    h = torch.randn(B, D, generator=g).to(device=device, dtype=dtype).requires_grad_()
    y = (torch.rand(B, K, generator=g) > 0.5).to(device=device, dtype=dtype)
    # The fused op's parameters are the eager module's, concatenated: the same maths.
    weight = torch.cat([model.primary.weight, model.aux.weight]).detach().clone().requires_grad_()
    bias = torch.cat([model.primary.bias, model.aux.bias]).detach().clone().requires_grad_()
    loss_w, feat_c = heads.head_coefficients(n_primary, n_aux, LAMBDA, device=device)
    return model, h, y, weight, bias, loss_w, feat_c


def _capture_graph(step, leaves):
    """A CUDA graph of ``step`` (forward + backward with every leaf's .grad None, so backward
    writes fresh gradient buffers in the graph's pool); replaying it recomputes them in place."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture stream (cuBLAS handles, allocator)
        for _ in range(3):
            for t in leaves:
                t.grad = None
            step()
    torch.cuda.current_stream().wait_stream(side)
    for t in leaves:
        t.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph


def _variants(B, K, dtype, device, which, compile_backend="inductor"):
    model, h, y, weight, bias, loss_w, feat_c = _make_case(B, K, dtype, device)
    eager_leaves = [h, *model.parameters()]
    fused_leaves = [h, weight, bias]

    def reset(leaves):
        for t in leaves:
            t.grad = None

    def eager_step(fn=model):
        reset(eager_leaves)
        fn(h, y).backward()

    out = {}
    if "eager" in which:
        out["eager"] = eager_step
    if "compile" in which:
        compiled = torch.compile(model, dynamic=False, backend=compile_backend)
        out["compile"] = lambda: eager_step(compiled)
    if "compile-ro" in which and device == "cuda":
        compiled_ro = torch.compile(model, mode="reduce-overhead", dynamic=False)
        out["compile-ro"] = lambda: eager_step(compiled_ro)
    if "reference" in which:

        def ref_step():
            reset(fused_leaves)
            loss, _ = heads.reference_head_losses(h, weight, bias, y, loss_w, feat_c)
            loss.sum().backward()

        out["reference"] = ref_step
    if "fused" in which and ops.extension_available():
        if device == "cpu" or ops.cuda_kernels_available():

            def fused_step():
                reset(fused_leaves)
                loss, _ = ops.fused_heads(h, weight, bias, y, loss_w, feat_c)
                loss.sum().backward()

            out["fused"] = fused_step
        if "graph" in which and device == "cuda":
            # its own leaves: the other variants reset .grad to None, which must not touch the
            # buffers the graph writes
            gh, gw, gb = (t.detach().clone().requires_grad_() for t in (h, weight, bias))

            def graph_body():
                loss, _ = ops.fused_heads(gh, gw, gb, y, loss_w, feat_c)
                loss.sum().backward()

            try:
                out["graph"] = _capture_graph(graph_body, [gh, gw, gb]).replay
            except Exception as e:  # noqa: BLE001 - reported, and the other variants still run
                FAILURES.append(f"graph (B={B} K={K} {dtype}): {type(e).__name__}: {e}"[:300])
                print(f"warning: CUDA graph capture failed: {FAILURES[-1]}", file=sys.stderr)
    return out


def run(devices, shapes, dtypes, which, repeats_scale: float = 1.0, compile_backend: str = "inductor",
        on_row=None, profile: bool = False) -> list[Row]:
    rows = []
    for device in devices:
        for dtype_name in dtypes:
            dtype = getattr(torch, dtype_name)
            for B, K in shapes:
                torch._dynamo.reset()  # each case compiles afresh (see the module docstring)
                fns = _variants(B, K, dtype, device, which, compile_backend)
                # Fewer repeats for the large batch on CPU, where one step takes milliseconds.
                big = device == "cpu" and B >= 2048
                repeats = max(10, int((40 if big else 300) * repeats_scale))
                warmup = 5 if big else 30
                times = _time_all(fns, device, warmup, repeats)
                rows.append(Row(device, dtype_name, B, K, times, _profile(fns, device) if profile else {}))
                print(_format_row(rows[-1], which), flush=True)
                if on_row is not None:
                    on_row(rows)
    return rows


def _format_row(r: Row, which) -> str:
    cells = [r.device, r.dtype, str(r.B), str(r.K)]
    for v in which:
        t = r.times.get(v)
        cells.append(f"{t:.3f}" if t is not None else "–")
    for v in which:
        if v == "fused":
            continue
        t, f = r.times.get(v), r.times.get("fused")
        cells.append(f"{t / f:.2f}×" if t is not None and f else "–")
    return "| " + " | ".join(cells) + " |"


def table(rows: list[Row], which) -> str:
    head = ["device", "dtype", "B", "K", *[f"{v} ms" for v in which]]
    head += [f"{v}/fused" for v in which if v != "fused"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += [_format_row(r, which) for r in rows]
    return "\n".join(lines)


def profile_table(rows: list[Row], which) -> str:
    """Per case and variant: events per step (CUDA kernels, or aten operators on the CPU), their
    time per step, and that time over the measured median step time."""
    if not any(r.profile for r in rows):
        return ""
    what = "kernels" if any(r.device == "cuda" for r in rows) else "aten ops"
    head = ["device", "dtype", "B", "K", *[f"{v} {what} / ms / busy" for v in which]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.device, r.dtype, str(r.B), str(r.K)]
        for v in which:
            p, t = r.profile.get(v), r.times.get(v)
            cells.append(f"{p['events']:.0f} / {p['busy_ms']:.3f} / {p['busy_ms'] / t:.0%}" if p and t else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, check=True,
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               check=True, capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def device_label(device: str) -> str:
    if device == "cuda":
        return f"CUDA: {torch.cuda.get_device_name()}"
    n = torch.get_num_threads()
    return f"CPU: {_cpu_name()}, {n} thread{'' if n == 1 else 's'}"


_BEGIN = "<!-- fused-heads:begin -->"
_END = "<!-- fused-heads:end -->"
_INTRO = """## Fused GRL+BCE multi-head operator (issue 3)

Forward+backward of the AAL head computation, `benchmarks/bench_fused_heads.py --record`: eager
composition (GRL autograd.Function + two nn.Linear + BCEWithLogitsLoss), the same under
torch.compile, the pure-PyTorch reference (`aal_k8s.heads.reference_head_losses`) and the fused
op (`aal_k8s.ops.fused_heads`). D = 512; times are medians in ms over interleaved repeats; ratios
> 1 mean the fused op is faster. The sections below are rewritten by `--record`, one per device.
"""


def record(rows: list[Row], which, path: Path) -> None:
    """Replace (or add) one section per device inside this benchmark's block of BENCHMARKS.md."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if _BEGIN not in text:
        text = text.rstrip("\n") + f"\n\n{_BEGIN}\n{_INTRO}\n{_END}\n"
    for device in dict.fromkeys(r.device for r in rows):
        label = device_label(device)
        key = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        body = "\n".join([
            f"<!-- bench:{key} -->",
            f"### {label}",
            "",
            f"- date: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
            f"- torch {torch.__version__}, CPU capability "
            f"{torch.backends.cpu.get_cpu_capability()}, git {_git_commit()}",
            f"- fused path: {ops.describe()['active']}; 1-min load average at the end: {load:.2f}",
            "",
            table([r for r in rows if r.device == device], which),
            f"<!-- /bench:{key} -->",
        ])
        pattern = re.compile(rf"<!-- bench:{re.escape(key)} -->.*?<!-- /bench:{re.escape(key)} -->",
                             re.S)
        if pattern.search(text):
            text = pattern.sub(lambda _m: body, text)
        else:
            text = text.replace(_END, body + "\n\n" + _END, 1)
    path.write_text(text if text.endswith("\n") else text + "\n")


def write_json(rows: list[Row], which, devices, path: Path) -> None:
    """The rows so far as JSON (rewritten after every row, so a run stopped early keeps them)."""
    import json

    doc = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "devices": {d: device_label(d) for d in devices},
        "fused_path": ops.describe()["active"],
        "variants": which,
        "D": D,
        "rows": [{"device": r.device, "dtype": r.dtype, "B": r.B, "K": r.K, "ms": r.times, "profile": r.profile}
                 for r in rows],
        "failures": FAILURES,
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    p.add_argument("--shapes", default="256x2,256x40,4096x2,4096x40", help="BxK list")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--variants", default="eager,compile,compile-ro,reference,fused,graph")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend of the compile variant (aot_eager: tracing only, for quick CPU checks)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    p.add_argument("--repeats-scale", type=float, default=1.0)
    p.add_argument("--record", action="store_true", help="update BENCHMARKS.md")
    p.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    p.add_argument("--json", type=Path, help="also write the rows as JSON to this file")
    p.add_argument("--profile", action="store_true",
                   help=f"after timing each case, profile {PROFILE_STEPS} steps of each variant (kernels and kernel time per step)")
    p.add_argument("--markdown", type=Path, help="also write the table (with device, torch, commit) to this file")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        if args.device == "cuda":
            p.error("no CUDA device")
        devices.remove("cuda")
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    dtypes = args.dtypes.split(",")
    which = [v for v in args.variants.split(",") if v]
    known = {"eager", "compile", "compile-ro", "reference", "fused", "graph"}
    if set(which) - known:
        p.error(f"unknown variant(s) {sorted(set(which) - known)} (known: {sorted(known)})")
    for cuda_only in ("compile-ro", "graph"):
        if cuda_only in which and "cuda" not in devices:
            which.remove(cuda_only)
    if not ops.extension_available():
        print(f"warning: extension not built ({ops.extension_error()}); no fused timings",
              file=sys.stderr)

    print(f"torch {torch.__version__}; {', '.join(device_label(d) for d in devices)}; "
          f"fused path: {ops.describe()['active']}")
    print(table([], which))
    def on_row(rows):
        if args.json:
            write_json(rows, which, devices, args.json)

    rows = run(devices, shapes, dtypes, which, args.repeats_scale, args.compile_backend, on_row, args.profile)
    if FAILURES:
        print("dropped variants:\n" + "\n".join(FAILURES), file=sys.stderr)
    if args.json:
        write_json(rows, which, devices, args.json)
    if args.markdown:
        args.markdown.write_text(
            f"- torch {torch.__version__} (CUDA {torch.version.cuda}), git {_git_commit()}, "
            f"{'; '.join(device_label(d) for d in devices)}, fused path: {ops.describe()['active']}, "
            f"compile backend: {args.compile_backend}\n\n{table(rows, which)}\n"
            + (f"\nProfile, per step ({PROFILE_STEPS} profiled): events, their time in ms, and that time over the "
               f"measured step time (on CUDA, the rest is host and launch overhead):\n\n{profile_table(rows, which)}\n"
               if args.profile else "")
            + "".join(f"\n- dropped: {f}" for f in FAILURES) + ("\n" if FAILURES else ""))
    if args.record:
        record(rows, which, args.out)
        print(f"recorded in {args.out}")
    return 3 if FAILURES else 0  # the other variants were measured and written


if __name__ == "__main__":
    raise SystemExit(main())
