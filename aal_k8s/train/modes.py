"""What each training mode does inside the generic loop (``aal_k8s.train.loop``).

  single, multi  primary heads sharing the backbone (pairwise runs are multi with two heads)
  adversarial    primary heads + auxiliary heads behind gradient reversal: the backbone gets the
                 gradient of mean primary BCE - lambda * mean auxiliary BCE, the auxiliary heads
                 minimise their own BCE (eq. 6/10/11). The head maths sits behind
                 ``aal_k8s.heads.head_losses``, which the fused operator implements.
  gan, wgan      the GAN (eq. 4/5) and Wasserstein-critic objectives of ``aal_k8s.objectives``;
                 wgan clips the critic after every step
  shared         adversarial on hidden layers over a frozen CNN (the multi-task run's backbone,
                 given as ``init_state``); only the hidden layers and heads train
  affinity       multi, plus lookahead inter-task affinity measured every k steps
                 (``aal_k8s.affinity``); the measurements leave the training trajectory unchanged
The adversarial modes' ``lambda_schedule: dann`` ramps lambda up over training (DANN).

A mode is a class: the loop calls its hooks (``features``, ``loss``, ``before_step``,
``after_step``...) and never branches on the mode's name. ``MODES`` maps every mode of
``aal_k8s.modes`` (the typed options) to its class.
"""

from __future__ import annotations

import torch

from aal_k8s.heads import head_coefficients, head_losses
from aal_k8s.modes import MODE_OPTIONS, AdversarialOptions, AffinityOptions, Options, SharedOptions, WganOptions
from aal_k8s.objectives import clip_critic_, dann_lambda, gan_losses, wgan_losses


class Mode:
    """A run's primary heads, trained on mean primary BCE (``head_losses``): single and multi."""

    adversarial = False  # auxiliary heads and a lambda

    def __init__(self, spec, options: Options, device: torch.device, heads_impl: str):
        self.spec, self.options, self.device, self.heads_impl = spec, options, device, heads_impl
        self.n_primary, self.n_aux = len(spec.primary), len(spec.auxiliary)
        self.lam = spec.lam if self.adversarial else 0.0
        self._coefficients_lam = None
        self._coefficients = None

    # -- the model --------------------------------------------------------------------------------
    def hidden_layers(self) -> int:
        """Hidden layers between the backbone and the heads."""
        return 0

    def prepare(self, model) -> None:
        """After the weights are loaded, before the optimizer sees the parameters."""

    def features(self, model, compile: bool):
        """The function from images to the heads' input features."""
        return torch.compile(model.features) if compile else model.features

    def train_mode(self, model) -> None:
        """At the start of every epoch's training pass."""
        model.train()

    # -- the run ----------------------------------------------------------------------------------
    def start(self, model, opt, pipe, batch_size: int) -> None:
        """Once the optimizer and the input pipeline exist."""

    def lam_at(self, progress: float) -> float:
        """Lambda at ``progress`` (fraction of training done)."""
        return 0.0

    def before_step(self, step: int, x, y) -> None:
        """Before the update of global step ``step`` on batch (x, y)."""

    def loss(self, h, model, y, lam: float):
        """``(per_head, total)``: per-head losses [K] (detached or not) and the scalar to backward."""
        if self._coefficients_lam != lam:  # the same numbers for the same lambda: made once per value
            self._coefficients = head_coefficients(self.n_primary, self.n_aux, lam, device=self.device)
            self._coefficients_lam = lam
        loss_w, feat_c = self._coefficients
        per_head, _ = head_losses(h, model.head_weight, model.head_bias, y, loss_w, feat_c, impl=self.heads_impl)
        return per_head, per_head.sum()

    def after_step(self, model) -> None:
        """After every optimizer step."""

    # -- what the mode adds to checkpoints, timings and the result --------------------------------
    def state_dict(self) -> dict:
        """Extra checkpoint entries."""
        return {}

    def resume(self, state: dict, pipe, batch_size: int) -> None:
        """Continue from the checkpoint ``state`` (after the loop restored model and optimizer)."""

    def timings(self) -> dict[str, float]:
        return {}

    def result_extra(self) -> dict:
        """Merged into the run's metrics."""
        return {}


class GradientReversal(Mode):
    """adversarial: the auxiliary heads behind gradient reversal (eq. 6/10/11)."""

    adversarial = True
    options: AdversarialOptions

    def lam_at(self, progress: float) -> float:
        if self.options.lambda_schedule == "dann":
            return dann_lambda(self.lam, progress, self.options.dann_alpha)
        return self.lam


class Shared(GradientReversal):
    """shared: gradient reversal on hidden layers over a frozen CNN."""

    options: SharedOptions

    def hidden_layers(self) -> int:
        return self.options.hidden_layers

    def prepare(self, model) -> None:
        model.backbone.requires_grad_(False)  # frozen: only the hidden layers and heads train

    def features(self, model, compile: bool):
        hidden = torch.compile(model.hidden) if compile else model.hidden

        def features(x):
            with torch.no_grad():  # the frozen CNN needs no graph
                h = model.backbone(x)
            return hidden(h)

        return features

    def train_mode(self, model) -> None:
        model.train()
        model.backbone.eval()  # frozen, batch-norm statistics included


class Gan(GradientReversal):
    """gan: features fool the auxiliary heads (eq. 4/5)."""

    objective = staticmethod(gan_losses)

    def loss(self, h, model, y, lam: float):
        return self.objective(h, model.head_weight, model.head_bias, y, self.n_primary, lam)


class Wgan(Gan):
    """wgan: the auxiliary heads are Wasserstein critics, clipped after every step."""

    objective = staticmethod(wgan_losses)
    options: WganOptions

    def after_step(self, model) -> None:
        clip_critic_(model.head_weight, model.head_bias, self.n_primary, float(self.options.clip))


def _cycle_batches(pipe, split: str, batch_size: int):
    """The split's batches in order, over and over (the k-th affinity measurement takes the k-th)."""
    while True:
        yield from pipe.eval_batches(split, batch_size)


class Affinity(Mode):
    """affinity: multi, plus lookahead inter-task affinity every ``every`` steps."""

    options: AffinityOptions

    def start(self, model, opt, pipe, batch_size: int) -> None:
        from aal_k8s.affinity import LookaheadAffinity

        o = self.options
        self.affinity = LookaheadAffinity(model, opt, self.n_primary + self.n_aux, every=o.every, window=o.window)
        self.held_out = _cycle_batches(pipe, "val", batch_size) if o.measure_on == "val" else None

    def before_step(self, step: int, x, y) -> None:
        if self.affinity.due(step):
            # restores parameters, buffers and optimizer state bitwise
            self.affinity.measure(x, y, held_out=next(self.held_out) if self.held_out is not None else None)

    def state_dict(self) -> dict:
        return {"affinity": self.affinity.state_dict()}

    def resume(self, state: dict, pipe, batch_size: int) -> None:
        self.affinity.load_state_dict(state["affinity"])
        if self.held_out is not None:  # the held-out batches continue where the interrupted run was
            n_val_batches = -(-pipe.size("val") // batch_size)
            for _ in range(self.affinity.measurements % n_val_batches):
                next(self.held_out)

    def timings(self) -> dict[str, float]:
        return {"affinity": self.affinity.seconds}  # inside "train" too: the measurements' share of it

    def result_extra(self) -> dict:
        return {
            "affinity": {
                "tasks": self.spec.heads,
                "z": self.affinity.matrix(),  # z[i][j] = Z(i -> j): a step for task i, measured on task j
                "measurements": self.affinity.measurements,
                "every": self.options.every,
                "window": self.options.window,
            }
        }


#: Every mode's class; the keys are the modes of ``aal_k8s.modes``.
MODES: dict[str, type[Mode]] = {
    "single": Mode,
    "multi": Mode,
    "affinity": Affinity,
    "adversarial": GradientReversal,
    "gan": Gan,
    "wgan": Wgan,
    "shared": Shared,
}
if set(MODES) != set(MODE_OPTIONS):  # a mode with options but no training (or the reverse): say which
    raise ImportError(f"aal_k8s.train.modes and aal_k8s.modes disagree on {sorted(set(MODES) ^ set(MODE_OPTIONS))}")
