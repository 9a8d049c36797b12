"""The GPU campaign (issue 17): prove the CUDA path and measure it, in one command of about 8 minutes.

On a GPU machine that has only this working tree and a python3 with torch (no internet):

    python3 benchmarks/gpu_campaign.py --commit <sha>     # writes under $OUT (else ./campaign-out)
    python3 benchmarks/gpu_campaign.py --only fused_heads,input_pipeline --commit <sha>   # a rerun;
                                                           # the build is reused while the machine is warm

Anywhere (CI runs this through tests/test_gpu_campaign.py, so the campaign never rots):

    python benchmarks/gpu_campaign.py --dry-run --out /tmp/campaign    # the same steps, tiny, on the CPU

Back on the development machine, with the campaign.md the device tool fetched:

    python benchmarks/gpu_campaign.py --record /path/to/campaign.md     # into BENCHMARKS.md (replaces the
                                                                        # earlier record of the same device)

Steps, in order (each a subprocess with its own time limit, inside one overall --budget; a step that
fails or times out is recorded with its log and the next one runs; a step whose budget is gone is
recorded as skipped):

  env             device, driver, torch/CUDA/cuDNN versions, commit; copy bandwidth and bf16 matmul rate
  build           the extensions in place (setup.py build_ext --inplace, only the GPU's own arch);
                  skipped when the sources are unchanged since the last build on this machine
  tests           every test module with a ``cuda`` mark, ``-m cuda``; on a GPU a skipped test fails the step
  fused_heads     bench_fused_heads.py: eager, torch.compile default and reduce-overhead, reference,
                  fused op, fused op in a CUDA graph; fp32/bf16; B in {256, 4096}; K in {2, 40}
  worker_epoch    bench_worker_epoch.py: ``aal-k8s prepare`` of a generated CelebA-layout folder, then
                  one ResNet18 AAL run in a ``python -m aal_k8s worker`` process, 2 epochs
  input_pipeline  bench_input_pipeline.py at CelebA size: naive PIL DataLoader vs packed GPU-resident
                  (bf16, channels_last), with and without torch.compile

Then the targets of issue 17 (fused >= 3x eager and >= 1.3x torch.compile; training step with its
data path >= 4x naive and >= 12,000 images/s; CelebA protocol <= 24 device-hours), each met or
missed with its figure.

Output (at most 8 files come back from the device tool; this writes 3, rewritten after every step
so that a run cut short still returns what it measured):

  campaign.md    the header (device, date, commit, torch, CUDA), step table, targets, each step's
                 tables, in the form BENCHMARKS.md records
  campaign.json  the same as data
  campaign.log   every step's full output

A benchmark that loses one variant (a compile error, a DataLoader crash) still writes the others and
exits 3, so its step shows as failed with its figures kept.

Exit status: 0 when every step ran and passed, 1 when one failed, timed out or was skipped, 2 on bad
arguments. The driver itself uses the standard library only, so a broken torch fails a step, not it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
# worker_epoch before input_pipeline: it is cheaper, and it proves the path every real run takes;
# the pipeline benchmark keeps what it measured if the budget runs out during its compiles
STEPS = ("env", "build", "tests", "fused_heads", "worker_epoch", "input_pipeline")
# Seconds each step may take at most on the GPU (the overall --budget bounds their sum). Expected on
# an H100/H200 with 16 cores: env 15, build 60-120, tests 30-60, fused_heads 90-150 (torch.compile
# of 8 cases x 2 modes dominates), input_pipeline 90-150, worker_epoch 60-90.
CAPS = {"env": 60, "build": 240, "tests": 150, "fused_heads": 200, "worker_epoch": 150, "input_pipeline": 220}
MIN_STEP_SECONDS = 20  # a step with less than this left is skipped rather than started
TARGETS = {"fused_vs_eager": 3.0, "fused_vs_compile": 1.3, "train_vs_naive": 4.0, "train_images_per_s": 12_000,
           "protocol_hours": 24.0}  # fmt: skip
NAIVE = "naive fp32 NCHW (PIL + DataLoader)"


@dataclass
class StepResult:
    name: str
    status: str = "pending"  # ok | failed | timeout | skipped
    seconds: float = 0.0
    limit: float = 0.0
    note: str = ""
    command: str = ""
    data: dict = field(default_factory=dict)  # what the step measured (its JSON)


class Campaign:
    def __init__(self, args):
        self.args = args
        self.dry = args.dry_run
        self.out = Path(args.out)
        self.work = Path(args.work)
        self.deadline = time.monotonic() + args.budget
        self.results: dict[str, StepResult] = {}
        self.env_info: dict = {}
        self.started = dt.datetime.now(dt.timezone.utc)
        py_path = os.pathsep.join(p for p in [str(REPO), os.environ.get("PYTHONPATH", "")] if p)
        # the tree itself is importable: nothing needs installing on a bare machine
        self.env = dict(os.environ, PYTHONPATH=py_path, PYTHONUNBUFFERED="1")
        if self.dry:
            self.env.setdefault("OMP_NUM_THREADS", "1")

    # -- plumbing ---------------------------------------------------------------------------------

    def log(self, text: str) -> None:
        with open(self.out / "campaign.log", "a") as f:
            f.write(text)

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.log(text + "\n")

    def run_cmd(self, res: StepResult, cmd: list[str], limit: float, env: dict | None = None) -> int | None:
        """Run ``cmd`` in its own process group with a time limit; its output goes to the log.
        Returns the exit code, or None when it was killed at the limit (the whole group: a
        DataLoader worker or a compile worker must not outlive the step). Its own process group,
        not a new session: the device tool ends a command's leftovers unless they made a session."""
        res.command = " ".join(str(c) for c in cmd)
        self.log(f"\n===== {res.name}: {res.command}\n")
        with open(self.out / "campaign.log", "ab") as log:
            proc = subprocess.Popen([str(c) for c in cmd], cwd=REPO, env=env or self.env, stdout=log,
                                    stderr=subprocess.STDOUT, preexec_fn=os.setpgrp)  # fmt: skip
            try:
                return proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                return None
            except BaseException:  # SIGTERM/Ctrl-C of the driver: the step goes with it
                _kill_group(proc)
                raise

    def step(self, name: str, fn) -> None:
        res = StepResult(name)
        self.results[name] = res
        left = self.deadline - time.monotonic()
        res.limit = min(CAPS[name] * (self.args.cap_scale), left)
        if res.limit < MIN_STEP_SECONDS:
            res.status, res.note = "skipped", f"out of time ({left:.0f} s of the budget left)"
            self.say(f"[{name}] skipped: {res.note}")
            self.write()
            return
        self.say(f"[{name}] start (limit {res.limit:.0f} s)")
        t0 = time.monotonic()
        try:
            fn(res)
            if res.status == "pending":
                res.status = "ok"
        except StepFailed as e:
            res.status, res.note = e.status, str(e)
        except Exception as e:  # the driver's own bug in one step must not lose the others
            res.status, res.note = "failed", f"driver error: {type(e).__name__}: {e}"
        res.seconds = time.monotonic() - t0
        self.say(f"[{name}] {res.status} in {res.seconds:.0f} s{': ' + res.note if res.note else ''}")
        self.write()

    def checked(self, res: StepResult, cmd: list[str], env: dict | None = None) -> None:
        code = self.run_cmd(res, cmd, res.limit, env)
        if code is None:
            raise StepFailed("timeout", f"killed at its {res.limit:.0f} s limit")
        if code != 0:
            raise StepFailed("failed", f"exit {code} (see campaign.log)")

    def python(self, script: str, *args) -> list[str]:
        return [sys.executable, str(BENCH / script), *args]

    def read_json(self, res: StepResult, path: Path) -> None:
        if path.exists():
            res.data = json.loads(path.read_text())

    # -- steps ------------------------------------------------------------------------------------

    def step_env(self, res: StepResult) -> None:
        path = self.work / "env.json"
        self.checked(res, [sys.executable, str(BENCH / "gpu_campaign.py"), "--probe", str(path)]
                     + (["--dry-run"] if self.dry else []))  # fmt: skip
        self.read_json(res, path)
        self.env_info = res.data
        if not self.dry and not res.data.get("cuda_available"):
            raise StepFailed("failed", "torch sees no CUDA device (use --dry-run on a CPU machine)")

    def step_build(self, res: StepResult) -> None:
        stamp = REPO / "build" / "campaign-stamp.json"
        fingerprint = source_fingerprint(["csrc", "setup.py"])
        want_cuda = not self.dry
        before = self.describe_ops(res)
        built = before.get("extension_built") and (before.get("cuda_kernels") or not want_cuda)
        same = stamp.exists() and json.loads(stamp.read_text()).get("fingerprint") == fingerprint
        if built and (same or self.dry):
            res.note = "reused: the extension loads" + (" and its sources are unchanged" if same else "")
            res.data = {"ops": before, "built": False}
            return
        env = dict(self.env, MAX_JOBS=str(os.cpu_count() or 4))
        if want_cuda:
            cap = self.env_info.get("capability")  # only the GPU's own arch: half the nvcc time
            if cap and "TORCH_CUDA_ARCH_LIST" not in os.environ:
                env["TORCH_CUDA_ARCH_LIST"] = cap
            if "CUDA_HOME" not in os.environ:
                nvcc = "/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else shutil.which("nvcc")
                if nvcc:  # setup.py looks in CUDA_HOME only (a PATH wrapper may not be the toolkit)
                    env["CUDA_HOME"] = str(Path(nvcc).resolve().parent.parent)
        else:
            env["AAL_K8S_NO_CUDA"] = "1"  # a dry run never spends the CPU on nvcc
        self.checked(res, [sys.executable, "setup.py", "build_ext", "--inplace"], env)
        after = self.describe_ops(res)
        res.data = {"ops": after, "built": True, "arch": env.get("TORCH_CUDA_ARCH_LIST", "")}
        if not after.get("extension_built"):
            raise StepFailed("failed", f"built, but the extension does not load: {after.get('extension_error')}")
        if want_cuda and not after.get("cuda_kernels"):
            raise StepFailed("failed", f"the CUDA kernels do not load: {after.get('cuda_kernels_error')}")
        stamp.parent.mkdir(exist_ok=True)
        stamp.write_text(json.dumps({"fingerprint": fingerprint}))
        res.note = f"built: {after.get('active')}" + (f", TORCH_CUDA_ARCH_LIST={res.data['arch']}" if res.data["arch"] else "")

    def describe_ops(self, res: StepResult) -> dict:
        code = "import json; from aal_k8s import ops; print(json.dumps(ops.describe(), default=str))"
        proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=self.env, capture_output=True, text=True,
                              timeout=120)  # fmt: skip
        self.log(f"\n----- {res.name}: ops.describe(): {proc.stdout.strip() or proc.stderr.strip()[-2000:]}\n")
        try:
            return json.loads(proc.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            return {"extension_built": False, "extension_error": proc.stderr.strip()[-500:]}

    def step_tests(self, res: StepResult) -> None:
        files = cuda_test_files()
        if not files:
            raise StepFailed("failed", "no test module has a cuda mark")
        junit = self.work / "tests.xml"
        env = dict(self.env, AAL_K8S_REQUIRE_EXT="1")
        if not self.dry:
            env["AAL_K8S_REQUIRE_CUDA_EXT"] = "1"
        cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-m", "cuda", "-p", "no:cacheprovider",
               f"--junitxml={junit}", *files]  # fmt: skip
        code = self.run_cmd(res, cmd, res.limit, env)
        counts = junit_counts(junit) if junit.exists() else {}
        res.data = {"files": files, **counts}
        res.note = ", ".join(f"{v} {k}" for k, v in counts.items() if v) or "no results"
        if code is None:
            raise StepFailed("timeout", f"killed at its {res.limit:.0f} s limit; {res.note}")
        if code != 0:
            raise StepFailed("failed", f"pytest exit {code}: {res.note}")
        if not self.dry and counts.get("skipped"):
            raise StepFailed("failed", f"cuda tests skipped on a GPU machine: {res.note}")

    def step_fused_heads(self, res: StepResult) -> None:
        js, md = self.work / "fused.json", self.work / "fused.md"
        if self.dry:
            args = ["--device", "cpu", "--shapes", "16x2,32x4", "--dtypes", "float32,bfloat16", "--variants",
                    "eager,compile,reference,fused", "--compile-backend", "aot_eager", "--repeats-scale", "0.03",
                    "--threads", "1", "--profile"]  # fmt: skip
        else:
            args = ["--device", "cuda", "--shapes", "256x2,256x40,4096x2,4096x40", "--dtypes", "float32,bfloat16",
                    "--variants", "eager,compile,compile-ro,reference,fused,graph", "--repeats-scale", "0.5",
                    "--profile"]  # fmt: skip
        try:
            self.checked(res, self.python("bench_fused_heads.py", *args, "--json", js, "--markdown", md))
        finally:
            self.read_json(res, js)  # rows measured before a failure or the time limit still count
            if md.exists():
                res.data["markdown"] = md.read_text()

    def step_input_pipeline(self, res: StepResult) -> None:
        js, md = self.work / "pipeline.json", self.work / "pipeline.md"
        if self.dry:
            args = ["--device", "cpu", "--size", "celeba-tiny", "--images", "16", "--batch", "4", "--eval-batch", "4",
                    "--steps", "1", "--eval-steps", "1", "--input-steps", "2", "--warmup", "1", "--repeats", "1",
                    "--workers", "1", "--compile", "both", "--compile-backend", "eager", "--threads", "1"]  # fmt: skip
        else:
            # 2 rounds, not the default 3, and bf16 only (the training default; an fp32 compile
            # would add a minute), to fit the lease
            args = ["--device", "cuda", "--size", "celeba", "--repeats", "2", "--input-steps", "100",
                    "--compile", "both"]  # fmt: skip
        try:
            self.checked(res, self.python("bench_input_pipeline.py", *args, "--json", js, "--markdown", md))
        finally:
            self.read_json(res, js)
            if md.exists():
                res.data["markdown"] = md.read_text()

    def step_worker_epoch(self, res: StepResult) -> None:
        js, md = self.work / "worker.json", self.work / "worker.md"
        workdir = self.work / "worker"
        workdir.mkdir(exist_ok=True)
        if self.dry:
            args = ["--device", "cpu", "--train", "16", "--val", "8", "--test", "8", "--epochs", "1",
                    "--image-size", "32", "--batch-size", "8", "--workers", "0"]  # fmt: skip
        else:
            args = ["--device", "cuda"]
        try:
            self.checked(res, self.python("bench_worker_epoch.py", *args, "--workdir", workdir, "--json", js,
                                          "--markdown", md))  # fmt: skip
        finally:
            self.read_json(res, js)
            if md.exists():
                res.data["markdown"] = md.read_text()
            shutil.rmtree(workdir, ignore_errors=True)  # the pack and store: gigabytes on a GPU run

    # -- output -----------------------------------------------------------------------------------

    def targets(self) -> list[dict]:
        """Each target of issue 17 with its figure from this run (None when the step gave none)."""
        rows = []
        fused = self.results.get("fused_heads")
        frows = [r for r in (fused.data.get("rows", []) if fused else []) if r["ms"].get("fused")]

        def ratio_row(name, target, others, label):
            cases = []
            for r in frows:
                times = [r["ms"][o] for o in others if r["ms"].get(o)]
                if times:
                    cases.append((min(times) / r["ms"]["fused"], f"{r['dtype']} B={r['B']} K={r['K']}"))
            if cases:
                worst, best = min(cases), max(cases)
                figure = f"{worst[0]:.2f}x ({worst[1]}) to {best[0]:.2f}x ({best[1]})"
                rows.append(_target(name, label, target, worst[0], figure, ">="))
            else:
                rows.append(_target(name, label, target, None, "not measured", ">="))

        ratio_row("fused_vs_eager", TARGETS["fused_vs_eager"], ["eager"], "fused head >= 3x eager (fwd+bwd, worst case)")
        ratio_row("fused_vs_compile", TARGETS["fused_vs_compile"], ["compile", "compile-ro"],
                  "fused head >= 1.3x torch.compile (the faster mode, worst case)")  # fmt: skip
        pipe = self.results.get("input_pipeline")
        summary = pipe.data.get("summary", {}) if pipe else {}
        packed = {k: v for k, v in summary.items() if k != NAIVE}
        if packed and NAIVE in summary:
            name, best = max(packed.items(), key=lambda kv: kv[1]["best"]["train"])
            ratio = best["train_vs_naive"]
            rows.append(_target("train_vs_naive", "train step with data path >= 4x naive DataLoader", 4.0, ratio,
                                f"{ratio:.2f}x ({name})", ">="))  # fmt: skip
            rows.append(_target("train_images_per_s", "train step >= 12,000 images/s", 12_000, best["best"]["train"],
                                f"{best['best']['train']:,.0f} images/s ({name})", ">="))  # fmt: skip
            hours = best["projected_hours"]
            rows.append(_target("protocol_hours", "CelebA protocol <= 24 device-hours (projected)", 24.0, hours,
                                f"{hours:,.1f} h from the benchmark's best rates ({name})", "<="))  # fmt: skip
        else:
            for key, label in (("train_vs_naive", "train step with data path >= 4x naive DataLoader"),
                               ("train_images_per_s", "train step >= 12,000 images/s"),
                               ("protocol_hours", "CelebA protocol <= 24 device-hours (projected)")):  # fmt: skip
                rows.append(_target(key, label, TARGETS[key], None, "not measured", "<=" if "hours" in key else ">="))
        worker = self.results.get("worker_epoch")
        if worker and worker.data.get("projected_hours") is not None:
            w = worker.data
            hours, fixed = w["projected_hours"], w["fixed_hours"]
            rows.append(_target("protocol_hours_worker", "CelebA protocol <= 24 device-hours (worker run, batch "
                                f"{w['batch_size']})", 24.0, hours + fixed,
                                f"{hours + fixed:,.1f} h ({hours:,.1f} training + evaluation, {fixed:,.1f} per-run "
                                "fixed costs)", "<="))  # fmt: skip
        return rows

    def header(self) -> list[str]:
        e = self.env_info
        return [
            f"## GPU campaign{' (dry run on the CPU: tiny sizes, figures not comparable)' if self.dry else ''}: "
            f"{e.get('device', 'device unknown')}",
            "",
            f"- date: {self.started.strftime('%Y-%m-%d %H:%M UTC')}; commit {self.args.commit or git_commit()}; "
            f"source fingerprint {source_fingerprint(FINGERPRINTED)}",
            f"- torch {e.get('torch', '?')}, CUDA {e.get('cuda', '?')}, cuDNN {e.get('cudnn', '?')}, driver "
            f"{e.get('driver', '?')}, nvcc {e.get('nvcc', '?')}, Python {e.get('python', '?')}, {e.get('cpus', '?')} CPUs",
            f"- device: {e.get('device', '?')}, compute capability {e.get('capability', '?')}, "
            f"{e.get('sms', '?')} SMs, {e.get('memory_gib', '?')} GiB; clocks at the start: {e.get('clocks', '?')}",
            f"- ceilings measured here: device-to-device copy {e.get('copy_tb_s', '?')} TB/s (read + write), "
            f"bf16 matmul {e.get('bf16_tflops', '?')} TFLOP/s ({e.get('matmul_n', '?')}^3, median of 10)",
            f"- command: `{' '.join(self.args.argv)}`; budget {self.args.budget:.0f} s",
        ]

    def write(self) -> None:
        steps = [asdict(r) for r in self.results.values()]
        targets = self.targets()
        doc = {"dry_run": self.dry, "started": self.started.isoformat(), "commit": self.args.commit or git_commit(),
               "fingerprint": source_fingerprint(FINGERPRINTED), "env": self.env_info, "steps": steps,
               "targets": targets}  # fmt: skip
        (self.out / "campaign.json").write_text(json.dumps(doc, indent=1, default=str))
        lines = self.header() + ["", "| step | status | seconds | limit | note |", "|---|---|---:|---:|---|"]
        for r in self.results.values():
            lines.append(f"| {r.name} | {r.status} | {r.seconds:.0f} | {r.limit:.0f} | {r.note.replace('|', '/')} |")
        if self.dry:
            lines += ["", "Dry run: CPU figures at tiny sizes; the verdicts only show that the arithmetic runs."]
        lines += ["", "| target | figure | verdict |", "|---|---|---|"]
        for t in targets:
            lines.append(f"| {t['label']} | {t['figure']} | {t['verdict']} |")
        for name, title in (("fused_heads", "Fused heads (ms per forward+backward; ratios > 1: the fused op is faster)"),
                            ("input_pipeline", None), ("worker_epoch", None)):  # fmt: skip
            r = self.results.get(name)
            if r and r.data.get("markdown"):
                md = r.data["markdown"]
                if title:
                    md = f"### {title}\n\n{md}"
                elif md.startswith("## "):  # the bench's own heading becomes a subsection here
                    md = "#" + md
                lines += ["", md.rstrip()]
        (self.out / "campaign.md").write_text("\n".join(lines) + "\n")

    def run(self) -> int:
        self.say(f"campaign {'dry run ' if self.dry else ''}in {REPO}, output in {self.out}, budget {self.args.budget:.0f} s")
        for name in STEPS:
            if name not in self.args.only and name != "env":  # env is cheap and every header needs it
                continue
            env = self.results.get("env")
            if env is not None and not self.dry and env.status != "ok":
                res = self.results[name] = StepResult(name, "skipped", note="the env step failed: no usable GPU")
                self.say(f"[{name}] skipped: {res.note}")
                continue
            self.step(name, getattr(self, f"step_{name}"))
        self.write()
        self.say("\n" + (self.out / "campaign.md").read_text())
        # the device tool returns the output's tail: end with the verdicts, short
        recap = [f"{r.name}: {r.status} ({r.seconds:.0f} s){' - ' + r.note if r.note else ''}" for r in self.results.values()]
        recap += [f"{t['label']}: {t['figure']}: {t['verdict']}" for t in self.targets()]
        self.say("\n== recap ==\n" + "\n".join(recap) + f"\noutput: {', '.join(sorted(p.name for p in self.out.iterdir()))}")
        bad = [r.name for r in self.results.values() if r.status != "ok"]
        return 1 if bad else 0


def _kill_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def _terminate(signum, _frame):
    raise SystemExit(128 + signum)  # unwinds through run_cmd, which ends the running step's group


class StepFailed(Exception):
    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


def _target(key, label, target, value, figure, op) -> dict:
    if value is None:
        verdict = "not measured"
    else:
        met = value >= target if op == ">=" else value <= target
        r = value / target
        verdict = "met" if met else f"missed ({r:,.0f}x the target)" if r >= 100 else f"missed ({r:.2g}x the target)"
    return {"key": key, "label": label, "target": target, "value": value, "figure": figure, "verdict": verdict}


FINGERPRINTED = ["aal_k8s", "csrc", "benchmarks", "setup.py", "pyproject.toml"]


def source_fingerprint(paths: list[str]) -> str:
    """sha256 (12 hex) over the named files/folders' .py/.cpp/.cu/.cuh/.h/.toml contents, so a run
    without git (the device tool copies the tree, not .git) still names the exact sources it ran."""
    h = hashlib.sha256()
    for rel in paths:
        p = REPO / rel
        files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file())
        for f in files:
            if f.suffix in {".py", ".cpp", ".cu", ".cuh", ".h", ".toml"} and "__pycache__" not in f.parts:
                h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git here; pass --commit)"


def cuda_test_files() -> list[str]:
    """Test modules that carry a cuda mark (new ones are picked up without editing this file); a
    module-level import of boto3 or moto elsewhere in tests/ cannot break the step on a machine
    without them."""
    found = []
    for f in sorted((REPO / "tests").rglob("test_*.py")):
        text = f.read_text()
        if "pytest.mark.cuda" in text or "@cuda_test" in text:
            found.append(str(f.relative_to(REPO)))
    return found


def junit_counts(path: Path) -> dict:
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return {}
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    return {"passed": n["tests"] - n["failures"] - n["errors"] - n["skipped"], "failed": n["failures"],
            "errors": n["errors"], "skipped": n["skipped"]}  # fmt: skip


def probe(path: str, dry: bool) -> int:
    """The env step's body (run as a subprocess, so that a broken torch fails the step, not the driver)."""
    import platform

    import torch

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "cpus": os.cpu_count(), "cuda_available": torch.cuda.is_available(),
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}  # fmt: skip
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)
    if nvcc:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
        info["nvcc"] = next((ln.split("release")[-1].strip() for ln in out.splitlines() if "release" in ln), "?")
    if shutil.which("nvidia-smi"):
        q = "name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw"
        out = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"], capture_output=True,
                             text=True).stdout.strip().splitlines()  # fmt: skip
        if out:
            cells = [c.strip() for c in out[0].split(",")]
            info["driver"] = cells[1] if len(cells) > 1 else "?"
            info["clocks"] = ", ".join(cells[2:])
    if torch.cuda.is_available():
        dev = torch.device("cuda")
        props = torch.cuda.get_device_properties(dev)
        info.update(device=props.name, capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                    memory_gib=round(props.total_memory / 2**30, 1))  # fmt: skip
    else:
        dev = torch.device("cpu")
        info.update(device="CPU (no CUDA device)", capability="-", sms="-", memory_gib="-")
    # the two ceilings (METHOD.md): a large copy (bytes read + written) and a large bf16 matmul,
    # on random data (zeros run faster), medians of 10 after 3 warm-ups
    n_copy = (2 << 30) if dev.type == "cuda" else (16 << 20)
    n_mm = 8192 if dev.type == "cuda" else 256
    src = torch.rand(n_copy // 4, device=dev)
    dst = torch.empty_like(src)
    a = torch.randn(n_mm, n_mm, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n_mm, n_mm, device=dev, dtype=torch.bfloat16)

    def median_seconds(fn):
        for _ in range(3):
            fn()
        times = []
        for _ in range(10):
            if dev.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2]

    info["copy_tb_s"] = round(2 * n_copy / median_seconds(lambda: dst.copy_(src)) / 1e12, 3)
    info["bf16_tflops"] = round(2 * n_mm**3 / median_seconds(lambda: a @ b) / 1e12, 3)
    info["matmul_n"] = n_mm
    Path(path).write_text(json.dumps(info, indent=1))
    print(json.dumps(info, indent=1))
    return 0


RECORD_BEGIN, RECORD_END = "<!-- gpu-campaign:begin -->", "<!-- gpu-campaign:end -->"


def record(campaign_md: Path, benchmarks_md: Path) -> str:
    """Put a campaign.md into BENCHMARKS.md between the campaign markers, replacing an earlier record
    of the same device (its '## GPU campaign: DEVICE' heading); returns the heading."""
    text = campaign_md.read_text()
    heading = text.splitlines()[0] if text.startswith("## GPU campaign") else ""
    if not heading:
        raise SystemExit(f"error: {campaign_md} is not a campaign.md (it must start with '## GPU campaign')")
    body = "#" + text.strip().replace("\n### ", "\n#### ")  # one level down: a subsection here
    doc = benchmarks_md.read_text()
    if RECORD_BEGIN not in doc:
        doc = doc.rstrip("\n") + f"\n\n{RECORD_BEGIN}\n{RECORD_END}\n"
    head, rest = doc.split(RECORD_BEGIN, 1)
    block, tail = rest.split(RECORD_END, 1)
    # records are separated by their '### GPU campaign' headings; keep the other devices' ones
    records = [r for r in block.split("\n### GPU campaign") if r.strip()]
    kept = [r for r in records if ("### GPU campaign" + r).splitlines()[0].strip() != "#" + heading.strip()]
    block = "".join("\n### GPU campaign" + r.rstrip("\n") + "\n" for r in kept) + "\n" + body + "\n"
    benchmarks_md.write_text(head + RECORD_BEGIN + block + RECORD_END + tail)
    return heading


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog="Steps: " + ", ".join(STEPS))
    p.add_argument("--dry-run", action="store_true", help="the same steps at tiny sizes on the CPU")
    p.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "campaign-out"),
                   help="output folder (default: $OUT, else ./campaign-out)")
    p.add_argument("--work", default="", help="scratch folder (default: a fresh one under /tmp)")
    p.add_argument("--commit", default="", help="the commit the tree is at (the device tool copies no .git)")
    p.add_argument("--only", default=",".join(STEPS), help="comma-separated steps to run (env always runs)")
    p.add_argument("--budget", type=float, default=None,
                   help="overall seconds (default 470 on a GPU, 300 for a dry run)")  # fmt: skip
    p.add_argument("--cap-scale", type=float, default=1.0, help="multiply every step's own time limit")
    p.add_argument("--record", metavar="CAMPAIGN_MD", type=Path,
                   help="put a fetched campaign.md into BENCHMARKS.md and exit")
    p.add_argument("--benchmarks", type=Path, default=REPO / "BENCHMARKS.md", help=argparse.SUPPRESS)
    p.add_argument("--fingerprint", action="store_true",
                   help="print this tree's source fingerprint (to match a record's header) and exit")
    p.add_argument("--probe", metavar="FILE", help=argparse.SUPPRESS)  # the env step's subprocess
    args = p.parse_args(argv)
    if args.probe:
        return probe(args.probe, args.dry_run)
    if args.fingerprint:
        print(source_fingerprint(FINGERPRINTED))
        return 0
    if args.record:
        if not args.record.is_file():
            p.error(f"--record {args.record}: no such file")
        print(f"recorded in {args.benchmarks}: {record(args.record, args.benchmarks)}")
        return 0
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in STEPS]
    if unknown or not only:
        p.error(f"--only: unknown step(s) {', '.join(unknown) or '(none given)'}; steps: {', '.join(STEPS)}")
    if args.budget is not None and args.budget <= 0 or args.cap_scale <= 0:
        p.error("--budget and --cap-scale must be > 0")
    args.only = only
    args.budget = args.budget or (300.0 if args.dry_run else 470.0)
    args.argv = ["python3", "benchmarks/gpu_campaign.py", *argv]
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        p.error(f"--out {out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    (out / "campaign.log").write_text("")
    own_work = not args.work
    work = Path(args.work) if args.work else Path(os.environ.get("TMPDIR", "/tmp")) / f"aal-campaign-{os.getpid()}"
    if own_work:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    args.work = str(work)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return Campaign(args).run()
    finally:
        if own_work:  # a --work folder given is kept for inspection
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
