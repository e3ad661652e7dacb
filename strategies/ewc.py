"""EWC restricted to the trainable (adapter) parameters.

Avalanche's EWCPlugin breaks on dict batches and would copy every parameter of a frozen 7B base; here the
diagonal empirical Fisher (mean of squared mini-batch gradients, as Avalanche computes it) and the anchors
cover only parameters with requires_grad. The penalty λ/2 Σ_k Σ_i F_k,i (θ_i − θ*_k,i)² enters through its
exact gradient, added in `before_update`, so it is independent of gradient accumulation.
"""

from __future__ import annotations

from itertools import islice

import torch
from avalanche.core import SupervisedPlugin
from torch.utils.data import DataLoader

from clsharelora.errors import ConfigError
from clsharelora.registry import register
from clsharelora.training.cl_base import CLContext, CLStrategy


class AdapterEWCPlugin(SupervisedPlugin, supports_distributed=True):
    def __init__(self, ewc_lambda: float, fisher_batches: int, mode: str = "separate", decay: float = 1.0):
        super().__init__()
        self.ewc_lambda, self.fisher_batches, self.mode, self.decay = ewc_lambda, fisher_batches, mode, decay
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

    def after_training_exp(self, strategy, **kwargs):
        model = strategy.model
        params = self._params(model)
        fisher = {n: torch.zeros_like(p, device="cpu") for n, p in params.items()}
        data = strategy.experience.dataset
        loader = DataLoader(data, batch_size=strategy.train_mb_size, shuffle=False, collate_fn=data.collate_fn)
        was_training = model.training
        model.eval()
        batches = 0
        for batch in islice(loader, self.fisher_batches):
            batch = {k: v.to(strategy.device) for k, v in batch.items()}
            model.zero_grad(set_to_none=True)
            model(**batch).loss.backward()
            for name, p in params.items():
                if p.grad is not None:
                    fisher[name] += p.grad.detach().cpu() ** 2
            batches += 1
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        fisher = {n: f / max(batches, 1) for n, f in fisher.items()}
        anchor = {n: p.detach().cpu().clone() for n, p in params.items()}
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
    defaults = {"ewc_lambda": 1000.0, "fisher_batches": 16, "mode": "separate", "decay": 1.0}

    def validate(self) -> None:
        o = self.options
        if not isinstance(o["ewc_lambda"], (int, float)) or o["ewc_lambda"] < 0:
            raise ConfigError("cl.ewc_lambda must be a number >= 0")
        if not isinstance(o["fisher_batches"], int) or o["fisher_batches"] < 1:
            raise ConfigError("cl.fisher_batches must be a positive integer")
        if o["mode"] not in ("separate", "online"):
            raise ConfigError("cl.mode must be 'separate' or 'online'")

    def plugins(self, context: CLContext) -> list:
        o = self.options
        return [AdapterEWCPlugin(float(o["ewc_lambda"]), o["fisher_batches"], o["mode"], float(o["decay"]))]
