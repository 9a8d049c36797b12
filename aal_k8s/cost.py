"""What a protocol will cost before anything is created: runs per stage, how many are committed,
projected device-hours, store bytes, dataset egress and a price (``aal-k8s plan``).

Device-hours come from measured rates, and the plan says which:

* a **calibration**: what this experiment's committed runs cost their worker: the seconds from the
  worker process's start to its commit (``timings.process``: interpreter start-up, imports, the
  pack download or cache hit, data loading, training and evaluation), or for records written
  before that was kept the worker's own time (``timings.worker``, then ``timings.total``, training
  and evaluation only); a pack member's figures are its share of the pack's
  (aal_k8s.worker.commit_result). A stage with committed runs is projected from its own mean, the others
  from the mean of every committed run (affinity runs scaled by ``AFFINITY_COST``). On Kubernetes
  a Job also holds its GPU while its pod starts before the worker does (volumes, image pull on a
  node that lacks it, container creation): no worker can see that, so it is
  ``plan.pod_startup_seconds`` per Job, added and named in the plan;
* otherwise the figures recorded for a **device class** (``plan.device_class``, ``DEVICE_RATES``),
  each naming where it comes from (BENCHMARKS.md), applied to the images one run reads:
  ``epochs x train + epochs x val + test``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from aal_k8s.config import Config
from aal_k8s.errors import CorruptRecordError, StageOrderError, StoreError
from aal_k8s.rates import DEVICE_RATES, Rates
from aal_k8s.runspec import RunSpec

#: One affinity run costs this many ordinary runs (BENCHMARKS.md "Affinity stage cost": 1.43 and
#: 1.73 over two measurements; the larger is used so the plan does not undershoot).
AFFINITY_COST = 1.73
#: Committed runs per stage whose seconds calibrate the plan.
CALIBRATION_SAMPLE = 50
#: What one committed run cost, most complete first: its worker process from start to commit
#: (aal_k8s.worker.process_seconds), the worker's own time, training and evaluation alone.
RUN_COST_TIMINGS = ("process", "worker", "total")


@dataclass
class StagePlan:
    stage: str
    runs: int
    committed: int
    upper_bound: bool = False  # partners not known yet: at most this many runs
    seconds_per_run: float = 0.0
    halving_jobs: int | None = None  # halving: Jobs still to create, one per run (or pack) and rung
    pack_jobs: int | None = None  # executor.runs_per_job > 1: the packs still to train, one Job each

    @property
    def to_run(self) -> int:
        return self.runs - self.committed

    @property
    def jobs(self) -> int:
        if self.halving_jobs is not None:
            return self.halving_jobs
        return self.to_run if self.pack_jobs is None else self.pack_jobs


@dataclass
class Plan:
    experiment: str
    store: str
    backend: str
    stages: list[StagePlan]
    rates_source: str
    unit: str  # GPU-h (k8s pods with GPUs), CPU-pod-h, device-h (local: one GPU or the CPU per run)
    devices_per_run: int
    price: float
    run_bytes: int  # stored bytes one committed run keeps (its best weights)
    pack_bytes: int  # one download of the dataset pack (0: generated in the worker)
    downloads: str  # how often the pack is downloaded: "per run", "per node", "once"
    warnings: list[str] = field(default_factory=list)
    runs_per_job: int = 1  # executor.runs_per_job: runs trained together in one Job (aal_k8s.packs)

    @property
    def jobs(self) -> int:
        """Kubernetes Jobs to create: one per run, one per pack with ``executor.runs_per_job`` > 1,
        and under halving one per run and rung."""
        return sum(s.jobs for s in self.stages)

    @property
    def runs_to_run(self) -> int:
        return sum(s.to_run for s in self.stages)

    def hours(self, s: StagePlan) -> float:
        return s.to_run * s.seconds_per_run * self.devices_per_run / 3600

    def render(self) -> str:
        unit = self.unit
        lines = [
            f"experiment {self.experiment} in {self.store} ({self.backend} backend)",
            f"rates: {self.rates_source}",
            f"{'stage':<12}{'runs':>8}{'committed':>11}{'to run':>8}{'s/run':>9}{unit:>11}{'store GB':>10}",
        ]
        for s in self.stages:
            runs = f"<={s.runs}" if s.upper_bound else str(s.runs)
            lines.append(
                f"{s.stage:<12}{runs:>8}{s.committed:>11}{s.to_run:>8}{seconds(s.seconds_per_run):>9}"
                f"{self.hours(s):>11.1f}{s.to_run * self.run_bytes / 1e9:>10.2f}"
            )
        total_h = sum(self.hours(s) for s in self.stages)
        runs = sum(s.runs for s in self.stages)
        done = sum(s.committed for s in self.stages)
        lines.append(
            f"{'total':<12}{runs:>8}{done:>11}{self.runs_to_run:>8}{'':>9}{total_h:>11.1f}"
            f"{self.runs_to_run * self.run_bytes / 1e9:>10.2f}"
        )
        for s in self.stages:
            if s.halving_jobs is not None and self.backend == "k8s":
                per = "run" if self.runs_per_job <= 1 else f"pack of up to {self.runs_per_job} runs"
                lines.append(f"{s.stage}: {s.halving_jobs} Jobs for {s.to_run} runs (halving: one Job per {per} and rung)")
            elif s.pack_jobs is not None and self.backend == "k8s":
                lines.append(f"{s.stage}: {s.pack_jobs} Jobs for {s.to_run} runs (packs of up to {self.runs_per_job} "
                             f"runs per Job; {unit} counted per run as if each trained alone: a pack's speed-up "
                             "is not measured into the plan)")  # fmt: skip
        egress = self._downloads_count() * self.pack_bytes
        pack_gb = self.pack_bytes / 1e9
        if self.pack_bytes and self.downloads == "per node":
            lines.append(f"dataset egress: {pack_gb:.1f} GB per node that runs a pod (the pack, downloaded per node)")
        elif self.pack_bytes:
            lines.append(f"dataset egress: {egress / 1e9:,.1f} GB ({pack_gb:.1f} GB pack, downloaded {self.downloads})")
        else:
            lines.append("dataset egress: none (the dataset is generated in each worker)")
        lines.append(
            f"cost: {total_h * self.price:,.2f} for {total_h:,.1f} {unit} at {self.price:g} per {unit[:-2]}-hour "
            f"(plan.gpu_hour_price); store adds {self.runs_to_run * self.run_bytes / 1e9:,.2f} GB"
        )
        if any(s.upper_bound for s in self.stages):
            lines.append("<=: partners are not known yet; attributes without a negative partner get no run")
        return "\n".join(lines + [f"note: {w}" for w in self.warnings]) + "\n"

    def _downloads_count(self) -> int:
        return self.jobs if self.downloads == "per run" else 1 if self.jobs else 0


def seconds(x: float) -> str:
    """Seconds per run with three significant digits up to 100 s (a sub-second calibration run is
    "0.42", not "0"), whole seconds above."""
    return f"{x:.0f}" if x >= 99.95 else f"{x:.3g}" if x >= 0.001 else "0" if x == 0 else "<0.001"


def split_sizes(cfg: Config) -> tuple[int, int, int]:
    """(train, val, test) images of the configured dataset."""
    d = cfg.dataset
    if d.name == "synthetic":
        return d.synthetic.n_train, d.synthetic.n_val, d.synthetic.n_test
    if d.name == "celeba":
        from aal_k8s.data.celeba import EXPECTED

        return EXPECTED["train"], EXPECTED["val"], EXPECTED["test"]
    from aal_k8s.data.duke import EXPECTED_IMAGES

    val = round(EXPECTED_IMAGES["train"] * d.val_fraction)
    return EXPECTED_IMAGES["train"] - val, val, EXPECTED_IMAGES["test"]


def pack_bytes(cfg: Config, store) -> int:
    """Bytes of one dataset pack download: the prepared pack's files if the store has one, else
    uint8 images at the pack resolution. 0 for the synthetic dataset (generated in the worker)."""
    name = cfg.dataset.name
    if name == "synthetic":
        return 0
    from aal_k8s.data.pack import pack_files, pack_prefix, parse_manifest

    key = f"{pack_prefix(name)}/manifest.json"
    try:
        if store.exists(key):
            return sum(int(f["size"]) for f in pack_files(parse_manifest(store.get_bytes(key), store.url(key))))
    except Exception as e:  # a plan must work without store credentials too
        print(f"warning: cannot read {store.url(key)} ({type(e).__name__}); estimating the pack size", file=sys.stderr)
    from aal_k8s.data import dataset_module

    mod = dataset_module(name)
    h, w = mod.IMAGE_SIZE
    return sum(split_sizes(cfg)) * h * w * 3


def weights_bytes(cfg: Config) -> int:
    """Bytes of one run's best weights (fp32 safetensors of the backbone; heads are negligible)."""
    from aal_k8s.model import build_backbone

    net = build_backbone(cfg.model.backbone, "none")
    return 4 * sum(p.numel() for p in net.parameters())


def seconds_per_run(cfg: Config, rates: Rates) -> float:
    train, val, test = split_sizes(cfg)
    epochs = cfg.train.epochs
    training = epochs * train / rates.train_images_per_s
    evaluation = (epochs * val + test) / rates.eval_images_per_s  # a validation pass per epoch, one test pass
    return training + evaluation + rates.fixed_seconds_per_run


def halving_seconds_per_run(cfg: Config, rates: Rates) -> float:
    """An adversarial run's mean cost under successive halving: the epochs halving trains (each
    with its validation pass), a test pass for the survivors only (a stopped run has no result),
    and the fixed cost per Job, of which halving starts one per run and rung: scaling a whole run
    by the share of epochs would drop both differences."""
    from aal_k8s.halving import jobs_and_survivors, rungs_for, run_epochs

    train, val, test = split_sizes(cfg)
    n, eta, rungs = len(cfg.adversarial.lambdas), cfg.adversarial.halving_eta, rungs_for(cfg)
    jobs, survivors = jobs_and_survivors(n, eta, rungs)
    epochs = run_epochs(n, cfg.train.epochs, eta, rungs)
    per_attribute = (
        epochs * (train / rates.train_images_per_s + val / rates.eval_images_per_s)
        + survivors * test / rates.eval_images_per_s
        + jobs * rates.fixed_seconds_per_run
    )
    return per_attribute / n


def _committed(exp) -> set[str]:
    """Ids of the experiment's committed runs, from one listing (none when the store is unreadable:
    a plan must work without store credentials)."""
    try:
        return exp.committed_ids()
    except Exception as e:
        print(f"warning: cannot list {exp.store.url(exp.key('runs'))}/ ({type(e).__name__}); counting no run as committed",
              file=sys.stderr)  # fmt: skip
        return set()


def _committed_seconds(exp, specs: list[RunSpec]) -> dict[str, float]:
    out = {}
    for s in specs:
        try:  # verified: a truncated or altered record is no run's time (submit then moves it aside)
            rec = exp.read_metrics(s.run_id)
        except CorruptRecordError:
            continue
        timings = (rec or {}).get("timings") or {}
        for name in RUN_COST_TIMINGS:  # the most complete figure the record has
            value = timings.get(name)
            if isinstance(value, (int, float)) and value > 0:
                out[s.run_id] = float(value)
                break
    return out


def build_plan(cfg: Config, exp, stages: list[str], plan_fn) -> Plan:
    """The plan of ``stages``; ``plan_fn(stage)`` gives a stage's RunSpecs (StageOrderError when
    it waits for reduce: then the stage is bounded by every attribute having a partner)."""
    from aal_k8s.data import attribute_names

    m = len(attribute_names(cfg.dataset.name))
    rows, seconds, warnings = [], {}, []
    committed = _committed(exp)
    for stage in stages:
        try:
            specs = plan_fn(stage)
        except (StageOrderError, StoreError):  # partners not known yet, or not readable from here
            bound = (
                m * len(cfg.adversarial.lambdas) if stage == "adversarial"
                else 2 * m * (cfg.adversarial.seeds - 1) if stage == "seeds"  # a single and an adversarial run per seed
                else m
            )  # fmt: skip
            rows.append(StagePlan(stage, bound, 0, upper_bound=True))
            continue
        done = {s.run_id for s in specs if s.run_id in committed}
        # a sample: one store read per run, and 1,021 reads would make a plan slow on S3
        secs = _committed_seconds(exp, [s for s in specs if s.run_id in done][:CALIBRATION_SAMPLE])
        seconds[stage] = secs
        rows.append(StagePlan(stage, len(specs), len(done)))
        if stage == "adversarial" and cfg.adversarial.lambda_search == "halving":
            from aal_k8s.halving import job_plan

            rows[-1].halving_jobs = job_plan(exp, cfg, specs).total
        elif cfg.executor.runs_per_job > 1:  # the packs the k8s backend makes: over every run of the stage
            from aal_k8s.planner import job_packs

            rows[-1].pack_jobs = sum(any(s.run_id not in done for s in p) for p in job_packs(specs, cfg.executor.runs_per_job))
    measured = [v for st, secs in seconds.items() if st != "affinity" for v in secs.values()]
    if measured:
        n = sum(len(v) for v in seconds.values())
        source = (f"calibration: {n} committed runs of this experiment (mean seconds from worker process start "
                  "to commit)")  # fmt: skip
        base = sum(measured) / len(measured)
        rates = None
    else:
        rates = DEVICE_RATES[cfg.plan.device_class]
        source = f"device class {cfg.plan.device_class}: {rates.source}"
        base = seconds_per_run(cfg, rates)
        m_cfg = cfg.model
        if (m_cfg.backbone, m_cfg.image_size) != (rates.backbone, rates.image_size):
            warnings.append(
                f"the {cfg.plan.device_class} rates are for {rates.backbone} at {rates.image_size}px; this experiment "
                f"trains {m_cfg.backbone} at {m_cfg.image_size}px, so its hours are only a rough bound"
            )
    for row in rows:
        own = seconds.get(row.stage) or {}
        factor = AFFINITY_COST if row.stage == "affinity" else 1.0
        row.seconds_per_run = sum(own.values()) / len(own) if own else base * factor
        if row.stage == "adversarial" and cfg.adversarial.lambda_search == "halving":
            from aal_k8s.halving import halving_fraction

            if rates is not None:  # the device's rates: epochs, test passes and Jobs counted apart
                row.seconds_per_run = halving_seconds_per_run(cfg, rates)
            else:  # a calibration does not split a run's seconds: a lambda trains that share of the grid's epochs
                row.seconds_per_run *= halving_fraction(cfg)
    local = cfg.executor.backend == "local"
    k = cfg.k8s
    startup = 0.0 if local else cfg.plan.pod_startup_seconds
    if startup:
        for row in rows:
            row.seconds_per_run += startup
        source += f"; plus {startup:g} s of pod start-up per Job (plan.pod_startup_seconds)"
    elif not local:
        source += "; pod start-up before the worker is not included (plan.pod_startup_seconds=0)"
    downloads = "once" if local or k.cache_volume_claim else "per node" if k.cache_host_path else "per run"
    if not local and downloads == "per run" and cfg.dataset.name != "synthetic":
        from aal_k8s.config import pod_pack_destination

        where = "into memory (its memory request grows by the pack)" if pod_pack_destination(cfg) == "memory" else "to its /tmp"
        warnings.append(f"every pod streams the whole pack from the store {where}: a cache volume "
                        "(k8s.cache_volume_claim, or k8s.cache_host_path where hostPath is allowed) fetches it once")  # fmt: skip
    # local runs use one device each (a GPU, or the CPU); a k8s pod k8s.gpus GPUs (0: a CPU pod)
    unit = "device-h" if local else "GPU-h" if k.gpus else "CPU-pod-h"
    gpus = 1 if local else max(k.gpus, 1)
    return Plan(
        experiment=exp.experiment, store=exp.store.uri, backend=cfg.executor.backend, stages=rows,
        rates_source=source, unit=unit, devices_per_run=gpus, price=cfg.plan.gpu_hour_price,
        run_bytes=weights_bytes(cfg), pack_bytes=pack_bytes(cfg, exp.store), downloads=downloads,
        warnings=warnings, runs_per_job=cfg.executor.runs_per_job,
    )  # fmt: skip


def confirm(plan: Plan, cfg: Config, yes: bool, stdin=None, stderr=None) -> None:
    """On Kubernetes: show the plan; above ``plan.confirm_above_jobs`` Jobs also ask (``--yes``
    skips), and without a terminal to ask on refuse with one line that says to pass --yes."""
    from aal_k8s.errors import AALError

    stdin, stderr = stdin or sys.stdin, stderr or sys.stderr
    if cfg.executor.backend != "k8s" or not plan.jobs:
        return
    ask = not yes and plan.jobs > cfg.plan.confirm_above_jobs
    if ask and not stdin.isatty():
        raise AALError(
            f"{plan.jobs} Jobs to create, more than plan.confirm_above_jobs={cfg.plan.confirm_above_jobs}: "
            "pass --yes to create them without asking (`aal-k8s plan` shows what they cost)"
        )
    stderr.write(plan.render())
    if not ask:
        return
    stderr.write(f"create {plan.jobs} Jobs? [y/N] ")
    stderr.flush()
    if stdin.readline().strip().lower() not in ("y", "yes"):
        raise AALError("cancelled: no Jobs created")

