"""O-LoRA (Wang et al. 2023, "Orthogonal Subspace Learning for Language Model Continual Learning").

Each experience trains a fresh LoRA (or ShareLoRA) adapter; the adapters of earlier experiences stay in the
model, frozen and active (their outputs keep adding up, as in the paper). The loss of experience t is

    task loss + lambda_1 * sum_{i<t} sum_{A pairs} ||A_i A_t^T||^2 + lambda_2 * ||theta_t||^2

with A in peft's (r, d_in) layout (the paper's A_i^T A_t); the sum runs over each distinct pair of tensors
once, so with ShareA the new shared A of a projection type meets each earlier shared A of that type once.
The trained adapter is always peft's "default" (fixed parameter names for checkpoints); at the start of
experience t it is copied into the frozen adapter "olora_{t-1}" and re-initialised like a new peft LoRA
(A Kaiming-uniform, B = 0) from a seeded generator, so a resumed run draws the same initial weights.
The penalty's exact gradient is added once per optimizer step in `before_update` (like EWC), so it does not
depend on gradient accumulation or the number of processes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from avalanche.core import SupervisedPlugin

from clsharelora.errors import ConfigError
from clsharelora.registry import register
from clsharelora.training.cl_base import CLContext, CLStrategy

from clsharelora.strategies import _adapter_copies as copies

FROZEN_PREFIX = "olora_"
SAVE_FILE = "olora_frozen.safetensors"


def orthogonality(pairs, norm: str = "squared") -> torch.Tensor:
    """sum over (A_old, A_new) pairs of ||A_old A_new^T||_F^2 (norm="squared", the paper's eq.) or of the
    absolute entries (norm="abs", what the authors' code computes)."""
    total = None
    for old, new in pairs:
        inner = old.float() @ new.float().T
        term = inner.pow(2).sum() if norm == "squared" else inner.abs().sum()
        total = term if total is None else total + term
    return total if total is not None else torch.zeros(())


class OLoRAPlugin(SupervisedPlugin, supports_distributed=True):
    def __init__(self, model, *, lambda_1: float, lambda_2: float, norm: str, seed: int, store=None):
        super().__init__()
        self.model, self.lambda_1, self.lambda_2, self.norm, self.seed = model, lambda_1, lambda_2, norm, seed
        self.store = store
        self.frozen: list[str] = []          # olora_0 .. olora_{t-1}: adapters of finished experiences
        self.last_penalty = (0.0, 0.0)       # (orthogonality, l2) of the last optimizer step

    # ------------------------------------------------------------ lifecycle
    def _add_frozen(self) -> str:
        """One more frozen adapter (peft's add_adapter, tied like the trained one), active from now on."""
        name = f"{FROZEN_PREFIX}{len(self.frozen)}"
        copies.add_copy(self.model, name)
        self.frozen.append(name)
        copies.activate(self.model, [copies.TRAINED, *self.frozen])
        return name

    def _freeze_trained(self) -> None:
        copies.copy_weights(self.model, copies.TRAINED, self._add_frozen())
        self._reinit_trained(len(self.frozen))

    def _reinit_trained(self, t: int) -> None:
        config = self.model.peft_config[copies.TRAINED]
        with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
            torch.manual_seed(self.seed * 7727 + t)
            for layer in copies.lora_layers(self.model).values():
                layer.reset_lora_parameters(copies.TRAINED, config.init_lora_weights)

    def before_training_exp(self, strategy, **kwargs):
        while len(self.frozen) < strategy.exp_index:   # once per new experience; never on a mid-experience resume
            self._freeze_trained()
        self._record_counts(strategy.exp_index)

    def _record_counts(self, t: int) -> None:
        if self.store is None:
            return
        trainable = sum(p.numel() for p in {id(p): p for p in self.model.parameters() if p.requires_grad}.values())
        adapter_total = trainable * (1 + len(self.frozen))
        counts = self.store.cost.setdefault("params_per_experience", [])
        entry = {"experience": t, "trainable": trainable, "adapter_total": adapter_total}
        counts[:] = [c for c in counts if c["experience"] != t] + [entry]

    # ---------------------------------------------------------------- loss
    def pairs(self):
        """Distinct (frozen A, trained A) tensor pairs, one per adapted module (one per group when A is shared)."""
        seen, out = set(), []
        for layer in copies.lora_layers(self.model).values():
            new = layer.lora_A[copies.TRAINED].weight
            for name in self.frozen:
                old = layer.lora_A[name].weight
                if (id(old), id(new)) not in seen:
                    seen.add((id(old), id(new)))
                    out.append((old, new))
        return out

    def penalty(self) -> tuple[torch.Tensor, torch.Tensor]:
        orth = orthogonality(self.pairs(), self.norm)
        params = {id(p): p for p in self.model.parameters() if p.requires_grad}.values()
        l2 = sum((p.float().pow(2).sum() for p in params), torch.zeros(()))
        return orth, l2

    def before_update(self, strategy, **kwargs):
        if not self.lambda_1 and not self.lambda_2:
            return
        orth, l2 = self.penalty()
        total = self.lambda_1 * orth.to(strategy.device) + self.lambda_2 * l2.to(strategy.device)
        if total.requires_grad:
            total.backward()   # adds to .grad after DDP averaged it (the same penalty on every rank), before clipping
        self.last_penalty = (float(orth.detach()), float(l2.detach()))

    # ------------------------------------------------------- state / saving
    def state_dict(self) -> dict:
        return {"frozen": [copies.tensors(self.model, name) for name in self.frozen]}

    def load_state_dict(self, state: dict) -> None:
        for values in state["frozen"][len(self.frozen):]:
            copies.load_tensors(self.model, self._add_frozen(), values)

    def save_adapters(self, model, directory: Path) -> None:
        """Beside the trained adapter: every frozen adapter this row was scored with."""
        from safetensors.torch import save_file

        flat = {f"{name}/{key}": value for name in self.frozen for key, value in copies.tensors(model, name).items()}
        if flat:
            save_file(flat, str(Path(directory) / SAVE_FILE), metadata={"frozen": ",".join(self.frozen)})


def load_frozen(model, directory) -> list[str]:
    """Add the frozen adapters saved by `save_adapters` to a model that already carries the trained one."""
    from safetensors import safe_open

    path = Path(directory) / SAVE_FILE
    if not path.is_file():
        return []
    with safe_open(str(path), "pt") as f:
        names = f.metadata()["frozen"].split(",")
        by_name = {n: {} for n in names}
        for key in f.keys():
            name, rest = key.split("/", 1)
            by_name[name][rest] = f.get_tensor(key)
    plugin = OLoRAPlugin(model, lambda_1=0.0, lambda_2=0.0, norm="squared", seed=0)
    plugin.load_state_dict({"frozen": [by_name[n] for n in names]})
    return names


@register("olora", "cl")
class OLoRA(CLStrategy):
    """Defaults from the authors' code (cmnfriend/O-LoRA, scripts/order_*.sh): lambda_1 = 0.5, lambda_2 = 0."""

    defaults = {"lambda_1": 0.5, "lambda_2": 0.0, "norm": "squared"}
    option_help = {"lambda_1": "weight of the orthogonality term sum ||A_i A_t^T||^2 over earlier adapters",
                   "lambda_2": "weight of the L2 term ||theta_t||^2 on the new adapter",
                   "norm": "squared (the paper) | abs (the authors' code)"}

    def validate(self) -> None:
        for key in ("lambda_1", "lambda_2"):
            v = self.options[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ConfigError(f"olora: option {key!r} must be a number >= 0, got {v!r}")
        if self.options["norm"] not in ("squared", "abs"):
            raise ConfigError(f"olora: option 'norm' must be 'squared' (the paper) or 'abs' (the authors' code), "
                              f"got {self.options['norm']!r}")

    def check_model(self, model) -> None:
        if not copies.lora_layers(model):
            raise ConfigError("olora works on peft LoRA adapters (their layers are copied and compared): use "
                              "--strategy lora or sharelora (any variant); this adapter has none")

    def plugins(self, context: CLContext) -> list:
        if context.model is None:
            raise ConfigError("olora needs the model in its CLContext")
        self.check_model(context.model)
        o = self.options
        return [OLoRAPlugin(context.model, lambda_1=float(o["lambda_1"]), lambda_2=float(o["lambda_2"]),
                            norm=o["norm"], seed=context.seed, store=context.store)]

    def plan(self, model, adapter_params: int, n_experiences: int) -> list[str]:
        """Dry run: build every experience's adapters on the (meta-device) model and check the counts against
        the closed form trainable = P, adapter total = (t + 1) * P for experience t (P = one adapter)."""
        plugin = OLoRAPlugin(model, lambda_1=0.0, lambda_2=0.0, norm="squared", seed=0)
        lines, bad = ["  o-lora parameters per experience (trainable / all adapters; closed form P, (t+1)*P):"], []
        for t in range(n_experiences):
            while len(plugin.frozen) < t:
                plugin._add_frozen()   # structure only: meta tensors hold no values to copy
            params = {id(p): p for n, p in model.named_parameters() if "lora_" in n}.values()
            total = sum(p.numel() for p in params)
            trainable = sum(p.numel() for p in params if p.requires_grad)
            ok = trainable == adapter_params and total == (t + 1) * adapter_params
            bad += [] if ok else [t + 1]
            lines.append(f"  experience {t + 1}: {trainable:,} / {total:,}  "
                         f"(closed form {adapter_params:,} / {(t + 1) * adapter_params:,}: {'OK' if ok else 'MISMATCH'})")
        if bad:
            raise ConfigError("\n".join(lines) + f"\no-lora parameter counts differ from the closed form "
                              f"in experience(s) {bad}")
        return lines
