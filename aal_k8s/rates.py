"""Measured throughput per device class, the figures ``aal_k8s.cost`` projects a plan from.

Its own core module, apart from the cost model: the config validates ``plan.device_class``
against these names, and the config may not import the planning layer."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rates:
    train_images_per_s: float  # one training step's throughput, images per second
    eval_images_per_s: float  # evaluation (forward only)
    fixed_seconds_per_run: float  # pack download/cache, copying it to the device, autotuning
    source: str  # where the figures come from
    measured: bool  # False: a target, not a measurement (the plan says so)
    backbone: str = "resnet18"  # what the figures were measured on
    image_size: int = 224


#: Rates per device class, each from BENCHMARKS.md. Add a class when a device has been measured
#: (``benchmarks/bench_input_pipeline.py --size celeba``).
DEVICE_RATES: dict[str, Rates] = {
    "h100-target": Rates(
        12_000, 36_000, 30,
        "issue 6's target for one H100 (12,000 train / 36,000 eval images/s, 30 s fixed per run); "
        "NOT measured: BENCHMARKS.md has no GPU figures yet", measured=False,
    ),
    "cpu-xeon-2-threads": Rates(
        126.5, 547.7, 0,
        "BENCHMARKS.md, input pipeline, packed bf16 on 2 Xeon threads at 64x64 (2026-11-24)", measured=True,
        image_size=64,
    ),
}  # fmt: skip
