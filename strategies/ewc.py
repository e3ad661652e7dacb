"""EWC restricted to the trainable (adapter) parameters, with the empirical Fisher from per-sample gradients.

Avalanche's EWCPlugin breaks on dict batches and would copy every parameter of a frozen 7B base; here the
Fisher and the anchors cover only parameters with requires_grad. After each experience,

    F_i = 1/S Σ_s (∂ℓ_s/∂θ_i)²,   ℓ_s = mean NLL of sample s's target tokens (its training loss alone),

over S = `fisher_samples` examples drawn by a seeded permutation of the experience (not its first batches),
one backward pass per sample in eval mode (squares of per-sample gradients, not of mini-batch means: the
square of a mean underestimates the mean of squares by the gradients' variance). Under data parallelism
the sample is split over the ranks and the sums all-reduced, so every rank holds the same Fisher.

The penalty λ/2 Σ_k Σ_i F_k,i (θ_i − θ*_k,i)² enters through its exact gradient, added in `before_update`,
so it is independent of gradient accumulation.

Shared tensors (ShareLoRA): a tensor used by L layers has gradient Σ_l g_l, so its Fisher is
E[(Σ_l g_l)²] = Σ_l E[g_l²] + cross-layer terms: about L times a per-layer copy's Fisher when the layers'
contributions are uncorrelated, up to L² when aligned. That is the right curvature for moving the shared
tensor (the move changes all L layers), so the default `fisher_norm: none` gives one λ the same meaning,
a quadratic estimate of the old tasks' loss increase, for LoRA and ShareLoRA. `fisher_norm: layers`
divides each tensor's Fisher by the number of modules sharing it (1 for LoRA's tensors): a sensitivity check
that prices a shared element like one layer's copy, i.e. constrains ShareLoRA less. docs/baselines.md.
"""

from __future__ import annotations

from collections import Counter

import torch
from avalanche.core import SupervisedPlugin

from clsharelora.errors import ConfigError
from clsharelora.registry import register
from clsharelora.training.cl_base import CLContext, CLStrategy

FISHER_NORMS = ("none", "layers")


def sharing_counts(model: torch.nn.Module) -> dict[str, int]:
    """Trainable parameter name (as `named_parameters()` lists it once) -> modules holding that tensor."""
    uses = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False) if p.requires_grad)
    return {n: uses[id(p)] for n, p in model.named_parameters() if p.requires_grad}


def fisher_sample(size: int, samples: int, seed: int, exp_index: int) -> list[int]:
    """The experience's items the Fisher is estimated on: a seeded random subset (all when it is smaller)."""
    generator = torch.Generator().manual_seed(seed * 15_485_863 + 7_919 * (exp_index + 1))
    return torch.randperm(size, generator=generator)[:samples].tolist()


class AdapterEWCPlugin(SupervisedPlugin, supports_distributed=True):
    def __init__(self, ewc_lambda: float, fisher_samples: int = 128, mode: str = "separate", decay: float = 1.0,
                 fisher_norm: str = "none", seed: int = 0):
        super().__init__()
        self.ewc_lambda, self.fisher_samples, self.mode, self.decay = ewc_lambda, fisher_samples, mode, decay
        self.fisher_norm, self.seed = fisher_norm, seed
        self.terms: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []  # (fisher, anchor)

    @staticmethod
    def _params(model) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in model.named_parameters() if p.requires_grad}

    def before_update(self, strategy, **kwargs):
        if not self.terms:
            return
        params = self._params(strategy.model)
        with torch.no_grad():
            for fisher, anchor in self.terms:
                for name, p in params.items():
                    penalty_grad = self.ewc_lambda * fisher[name].to(p.device) * (p - anchor[name].to(p.device))
                    p.grad = penalty_grad if p.grad is None else p.grad.add_(penalty_grad)

    def fisher(self, strategy) -> dict[str, torch.Tensor]:
        """The empirical Fisher of the experience just trained (see the module doc), on CPU."""
        model, data = strategy.model, strategy.experience.dataset
        dist = strategy.dist
        params = self._params(model)
        chosen = fisher_sample(len(data), self.fisher_samples, self.seed, strategy.experience.current_experience)
        squares = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
        was_training = model.training
        model.eval()
        for index in chosen[dist.rank::dist.world_size]:
            batch = {k: v.to(strategy.device) for k, v in data.collate_fn([data[index]]).items()}
            model.zero_grad(set_to_none=True)
            with strategy._autocast():
                loss = model(**batch).loss
            loss.backward()
            for name, p in params.items():
                if p.grad is not None:
                    squares[name] += p.grad.detach().float() ** 2
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        dist.all_reduce_sum(list(squares.values()))
        fisher = {n: (s / max(len(chosen), 1)).cpu() for n, s in squares.items()}
        if self.fisher_norm == "layers":
            counts = sharing_counts(model)
            fisher = {n: f / counts[n] for n, f in fisher.items()}
        return fisher

    def after_training_exp(self, strategy, **kwargs):
        fisher = self.fisher(strategy)
        anchor = {n: p.detach().cpu().clone() for n, p in self._params(strategy.model).items()}
        if self.mode == "online" and self.terms:
            old, _ = self.terms[0]
            fisher = {n: self.decay * old[n] + fisher[n] for n in fisher}
            self.terms = [(fisher, anchor)]
        else:
            self.terms.append((fisher, anchor))

    def state_dict(self) -> dict:
        return {"terms": self.terms}

    def load_state_dict(self, state: dict) -> None:
        self.terms = state["terms"]


@register("ewc", "cl")
class EWC(CLStrategy):
    """Options: ewc_lambda, fisher_samples (default 128 examples per experience), mode (separate | online),
    decay (online), fisher_norm (none | layers)."""

    defaults = {"ewc_lambda": 1000.0, "fisher_samples": 128, "mode": "separate", "decay": 1.0,
                "fisher_norm": "none"}
    option_help = {"ewc_lambda": "weight of the penalty lambda/2 sum F (theta - theta*)^2",
                   "fisher_samples": "examples per experience for the per-sample empirical Fisher (seeded)",
                   "mode": "separate (one term per past experience) | online (one decayed sum)",
                   "decay": "online mode: factor on the old Fisher per experience",
                   "fisher_norm": "none | layers (divide a shared tensor's Fisher by its sharing layers)"}

    def __init__(self, **options):
        if "fisher_batches" in options:
            raise ConfigError(f"ewc: option 'fisher_batches' was replaced by 'fisher_samples' (examples per "
                              f"experience, per-sample gradients; default {self.defaults['fisher_samples']}), "
                              f"got fisher_batches={options['fisher_batches']!r}")
        super().__init__(**options)

    def validate(self) -> None:
        o = self.options
        if isinstance(o["ewc_lambda"], bool) or not isinstance(o["ewc_lambda"], (int, float)) or o["ewc_lambda"] < 0:
            raise ConfigError(f"cl.ewc_lambda must be a number >= 0, got {o['ewc_lambda']!r}")
        if isinstance(o["fisher_samples"], bool) or not isinstance(o["fisher_samples"], int) \
                or o["fisher_samples"] < 1:
            raise ConfigError(f"cl.fisher_samples must be a positive integer, got {o['fisher_samples']!r}")
        if o["mode"] not in ("separate", "online"):
            raise ConfigError(f"cl.mode must be 'separate' or 'online', got {o['mode']!r}")
        if isinstance(o["decay"], bool) or not isinstance(o["decay"], (int, float)) or not 0 <= o["decay"] <= 1:
            raise ConfigError(f"cl.decay must be a number in [0, 1], got {o['decay']!r}")
        if o["fisher_norm"] not in FISHER_NORMS:
            raise ConfigError(f"cl.fisher_norm must be one of {', '.join(FISHER_NORMS)}, got {o['fisher_norm']!r}")

    def plugins(self, context: CLContext) -> list:
        o = self.options
        return [AdapterEWCPlugin(float(o["ewc_lambda"]), o["fisher_samples"], o["mode"], float(o["decay"]),
                                 o["fisher_norm"], seed=context.seed)]
