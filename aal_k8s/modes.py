"""Training modes and their typed options.

A stage (``aal_k8s.stages``) trains in one mode; the mode decides what a run optimises
(``aal_k8s.train.modes`` maps each to its objective and hooks). Each mode's options are a frozen
dataclass built by the stage from the config; ``RunSpec.options`` holds their serialised form,
``to_dict()``, which is hashed into the run id and stored with the spec, so that dict must never
change for a given setting. There are no defaults here: the config's are the only ones, and a spec
that lacks an option is an error naming it.

This module imports nothing heavy: the CLI's ``--help`` reaches it through ``aal_k8s.runspec``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from aal_k8s.errors import AALError


@dataclass(frozen=True)
class Options:
    """Options of a mode that has none: serialise to ``{}``."""

    def to_dict(self) -> dict[str, Any]:
        return {}

    @classmethod
    def parse(cls, d: dict[str, Any], run: str) -> "Options":
        """The options of ``d`` (a spec's ``options``); unknown or missing keys are one-line errors
        naming the run."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known - cls._optional_keys())
        if unknown:
            raise AALError(f"run {run}: options {', '.join(unknown)} are not options of {cls.__name__}")
        return cls._from(d, run)

    @classmethod
    def _optional_keys(cls) -> set[str]:
        return set()

    @classmethod
    def _from(cls, d: dict[str, Any], run: str) -> "Options":
        return cls()


def _need(d: dict[str, Any], key: str, run: str, tp):
    if key not in d:
        raise AALError(f"run {run}: its spec's options lack {key!r}")
    try:
        return tp(d[key])
    except (TypeError, ValueError):
        raise AALError(f"run {run}: option {key}={d[key]!r} is not a {tp.__name__}") from None


@dataclass(frozen=True)
class AdversarialOptions(Options):
    """Modes with auxiliary heads and a lambda: the lambda schedule. The paper's constant
    schedule serialises to nothing (so the paper's run ids never carried it)."""

    lambda_schedule: str  # constant | dann (adversarial.lambda_schedule)
    dann_alpha: float | None  # adversarial.dann_alpha; None with the constant schedule
    SCHEDULES: ClassVar[tuple[str, ...]] = ("constant", "dann")

    def to_dict(self) -> dict[str, Any]:
        if self.lambda_schedule == "constant":
            return {}
        return {"lambda_schedule": self.lambda_schedule, "dann_alpha": self.dann_alpha}

    @classmethod
    def _optional_keys(cls) -> set[str]:
        return {"lambda_schedule", "dann_alpha"}

    @classmethod
    def _from(cls, d: dict[str, Any], run: str) -> "AdversarialOptions":
        return cls(**cls._schedule(d, run))

    @staticmethod
    def _schedule(d: dict[str, Any], run: str) -> dict[str, Any]:
        kind = d.get("lambda_schedule", "constant")  # absent = the paper's constant (see to_dict)
        if kind not in AdversarialOptions.SCHEDULES:
            raise AALError(f"run {run}: lambda_schedule {kind!r} is not one of {', '.join(AdversarialOptions.SCHEDULES)}")
        if kind == "constant":
            return {"lambda_schedule": kind, "dann_alpha": None}
        return {"lambda_schedule": kind, "dann_alpha": _need(d, "dann_alpha", run, float)}


@dataclass(frozen=True)
class WganOptions(AdversarialOptions):
    clip: float  # adversarial.wgan_clip: the critic's weights are clipped to [-clip, clip]

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "clip": self.clip}

    @classmethod
    def _from(cls, d: dict[str, Any], run: str) -> "WganOptions":
        return cls(**cls._schedule(d, run), clip=_need(d, "clip", run, float))


@dataclass(frozen=True)
class SharedOptions(AdversarialOptions):
    hidden_layers: int  # adversarial.shared_hidden_layers, on the frozen CNN

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "hidden_layers": self.hidden_layers}

    @classmethod
    def _from(cls, d: dict[str, Any], run: str) -> "SharedOptions":
        return cls(**cls._schedule(d, run), hidden_layers=_need(d, "hidden_layers", run, int))


def default_every(n_tasks: int) -> int:
    """Steps between affinity measurements for the config's ``affinity.every: 0``: ``2 * n_tasks``.

    A measurement costs about K forward+backward passes (K training steps), so measuring every 2K
    steps adds about half a run."""
    return 2 * n_tasks


@dataclass(frozen=True)
class AffinityOptions(Options):
    every: int  # steps between two measurements (affinity.every resolved: never 0 here)
    window: int  # affinity.window
    measure_on: str  # affinity.measure_on: train | val

    def to_dict(self) -> dict[str, Any]:
        return {"every": self.every, "window": self.window, "measure_on": self.measure_on}

    @classmethod
    def _from(cls, d: dict[str, Any], run: str) -> "AffinityOptions":
        measure_on = _need(d, "measure_on", run, str)
        if measure_on not in ("train", "val"):
            raise AALError(f"run {run}: option measure_on={measure_on!r} is not train or val")
        return cls(every=_need(d, "every", run, int), window=_need(d, "window", run, int), measure_on=measure_on)


#: Every training mode and the type of its options.
MODE_OPTIONS: dict[str, type[Options]] = {
    "single": Options,  # one primary head
    "multi": Options,  # several primary heads sharing the backbone
    "affinity": AffinityOptions,  # multi + lookahead inter-task affinity measurements
    "adversarial": AdversarialOptions,  # gradient reversal (eq. 6/10/11)
    "gan": AdversarialOptions,  # eq. 4/5
    "wgan": WganOptions,  # Wasserstein critic as the auxiliary head
    "shared": SharedOptions,  # gradient reversal on hidden layers over a frozen CNN
}


def options_of(mode: str, options: dict[str, Any], run: str) -> Options:
    """The typed options of a run in ``mode``; an unknown mode or a bad option is one line."""
    if mode not in MODE_OPTIONS:
        raise AALError(f"run {run}: unknown mode {mode!r} (known: {', '.join(MODE_OPTIONS)})")
    return MODE_OPTIONS[mode].parse(options, run)
