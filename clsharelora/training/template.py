"""CausalLMTemplate: Avalanche's SupervisedTemplate taught to train causal LMs on dict batches.

What changes from SupervisedTemplate, and why:
- batches are dicts (input_ids, attention_mask, labels with prompt tokens at -100): the loss is the HF
  model's own token-level cross-entropy, normalised by the number of target tokens in the whole optimizer
  step (all micro-batches, all processes), so gradient accumulation and data parallelism give the same
  update as one big batch;
- only trainable (adapter) parameters reach the optimizer, each shared tensor once; a fresh AdamW and a
  warmup + decay schedule per experience (configurable);
- the global batch (`train.global_batch` sequences per optimizer step, all processes together) is the
  contract: accumulation is derived from it and the number of processes, so the optimizer steps of an
  experience (ceil(examples / global_batch) per epoch) and the learning-rate schedule do not depend on the
  hardware; the seeded sampler gives optimizer step k the same global_batch examples on any number of
  processes (a plugin may replace it through `sampler_factory`, e.g. replay's fixed memory share);
- on several processes the forward runs through PyTorch DDP (training/engine.py): bucketed all-reduce
  overlapped with backward, `no_sync` on every accumulation micro-step but the last; `self.model` stays the
  unwrapped peft model that plugins, scoring and checkpoints use; with `train.engine: fsdp` the model is
  instead sharded in place by FSDP2 once (engine.fully_sharded), gradient sync off on all micro-steps but
  the last, and scoring, adapter saving and checkpoints gather through the engine;
- only the positions that predict a target token are projected onto the vocabulary (`logits_to_keep` as a
  boolean mask, the loss given those positions' labels as `shift_labels`): an MMLU example is ~150 prompt
  tokens and one answer token, and the vocabulary projection is a fifth of SmolLM2's forward, so its cost
  and its (tokens x vocabulary) logits follow the targets, not the sequence; `mb_output.logits` is then
  (target tokens, vocabulary), in row-major order, and `logit_positions` the (batch, seq) mask behind it;
- gradient clipping, bf16 autocast, gradient checkpointing, and mid-experience resume (skip consumed batches).
Plugins see the usual Avalanche callbacks; `before_update` fires once per optimizer step.
"""

from __future__ import annotations

import contextlib
import math
from itertools import islice

import torch
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.templates import SupervisedTemplate
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm
from transformers import get_scheduler

from .. import hardware
from ..config import TrainConfig, accumulation_steps
from . import engine
from .distributed import Dist
from ..benchmarks.tokenized import IGNORE_INDEX


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Trainable parameters, each tensor once (shared ShareLoRA matrices appear in several modules)."""
    seen, out = set(), []
    for p in model.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def plan_steps(examples: int, global_batch: int, *, epochs: int, max_steps: int | None) -> tuple[int, int]:
    """(optimizer steps, epochs to run) of one experience: ceil(examples / global_batch) steps per epoch
    times epochs, or max_steps (then as many epochs as it takes). Nothing here depends on the processes."""
    per_epoch = math.ceil(examples / global_batch)
    if max_steps:
        return max_steps, math.ceil(max_steps / max(per_epoch, 1))
    return per_epoch * epochs, epochs


def target_positions(labels: torch.Tensor) -> torch.Tensor:
    """(batch, seq) bool: the positions whose next token is a target (position s predicts label s + 1, the
    HF causal-LM shift); the last position predicts nothing."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep


class CausalLMTemplate(SupervisedTemplate):
    def __init__(self, *, model: torch.nn.Module, train_config: TrainConfig, seed: int = 0,
                 device: str | torch.device = "cpu", plugins=None, evaluator: EvaluationPlugin | None = None,
                 dist: Dist | None = None, progress: bool = True, budgets: dict[int, dict] | None = None):
        self.cfg = train_config
        self.budgets = budgets or {}   # experience index -> {"epochs": .., "max_steps": ..} from the stream
        self.seed = seed
        self.dist = dist or Dist.single()
        self.progress = progress
        self.accumulation = accumulation_steps(train_config, self.dist.world_size)  # ConfigError if it does not divide
        self.sampler_factory = None    # set by a plugin in after_train_dataset_adaptation, used for one experience
        # train.engine=fsdp on several processes: FSDP2 shards the model in place, once for the whole run
        # (the parameter list is then fixed: runner refuses CL methods that change it), before the optimizer
        # sees its parameters; on one process there is nothing to shard and training is plain.
        self.sharded = train_config.engine == "fsdp" and self.dist.active
        if self.sharded:
            engine.fully_sharded(model, self.dist)
        params = trainable_parameters(model)
        if not params:
            raise ValueError("the model has no trainable parameters: apply an adapter first")
        optimizer = torch.optim.AdamW(params, lr=train_config.lr, weight_decay=train_config.weight_decay)
        super().__init__(model=model, optimizer=optimizer, train_mb_size=train_config.batch_size,
                         train_epochs=train_config.epochs, eval_mb_size=train_config.batch_size, device=device,
                         plugins=plugins, evaluator=evaluator or EvaluationPlugin(), eval_every=-1)
        self.scheduler = None
        self.exp_index = -1            # index of the experience being trained
        self.exp_step = 0              # optimizer steps done in this experience
        self.exp_epoch = 0             # epoch within this experience
        self.exp_microbatch = 0        # micro-batches consumed in the current epoch
        self.steps_in_exp = 0          # optimizer steps planned for this experience
        self.global_step = 0
        self.last_loss = float("nan")
        self.resume_position: dict | None = None   # set by the checkpoint plugin to continue mid-experience
        self._optimizer_exp = None
        self.engine_model: torch.nn.Module | None = None   # the DDP wrapper while an experience trains
        self._engine_synced = False                        # the first wrapper broadcast rank 0's weights
        if train_config.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if hasattr(model, "enable_input_require_grads"):
                model.enable_input_require_grads()

    # ------------------------------------------------------------------ data
    def make_train_dataloader(self, num_workers=0, shuffle=True, pin_memory=None, persistent_workers=False,
                              drop_last=False, **kwargs):
        self.exp_index = self.experience.current_experience
        factory, self.sampler_factory = self.sampler_factory, None
        order_seed = self.seed * 1009 + self.exp_index
        if factory is not None:
            self.sampler = factory(self.adapted_dataset, rank=self.dist.rank, world_size=self.dist.world_size,
                                   seed=order_seed, global_batch=self.cfg.global_batch)
        else:
            # Rank r takes positions r, r+W, ... of one seeded permutation, so step k consumes positions
            # [k*G, (k+1)*G) of it on any number of processes W (padding only in the last step).
            self.sampler = DistributedSampler(self.adapted_dataset, num_replicas=self.dist.world_size,
                                              rank=self.dist.rank, shuffle=True, seed=order_seed, drop_last=False)
        generator = torch.Generator().manual_seed(self.seed)  # keeps DataLoader from drawing on the global RNG
        self.dataloader = DataLoader(self.adapted_dataset, batch_size=self.train_mb_size, sampler=self.sampler,
                                     collate_fn=self.adapted_dataset.collate_fn, num_workers=num_workers,
                                     generator=generator, pin_memory=self.device.type == "cuda")
        # the epoch as all ranks see it: ceil(N/W)*W examples (padding), and ceil of that / G = ceil(N / G)
        self.steps_in_exp, self.train_epochs = self.planned_steps(len(self.sampler) * self.dist.world_size,
                                                                  self.exp_index)

    def planned_steps(self, examples: int, exp_index: int) -> tuple[int, int]:
        """(optimizer steps, epochs) of experience `exp_index` over `examples` (all processes together) under
        its budget; also used by joint training to give the union the sequential run's total steps."""
        budget = self.budgets.get(exp_index, {})
        return plan_steps(examples, self.cfg.global_batch, epochs=budget.get("epochs") or self.cfg.epochs,
                          max_steps=budget.get("max_steps") or self.cfg.max_steps)

    def _unpack_minibatch(self):
        self.mbatch = {k: v.to(self.device, non_blocking=True) for k, v in self.mbatch.items()}

    # ------------------------------------------------------------- optimizer
    def make_optimizer(self, reset_optimizer_state=False, **kwargs):
        """One optimizer + schedule per experience (or one for the whole run if reset_optimizer is off)."""
        if self._optimizer_exp == self.exp_index:
            return
        first = self._optimizer_exp is None
        self._optimizer_exp = self.exp_index
        if first or self.cfg.reset_optimizer:
            self.optimizer = torch.optim.AdamW(trainable_parameters(self.model), lr=self.cfg.lr,
                                               weight_decay=self.cfg.weight_decay)
        warmup = int(round(self.cfg.warmup_ratio * self.steps_in_exp))
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.lr
            group.pop("initial_lr", None)
        self.scheduler = get_scheduler(self.cfg.schedule, self.optimizer, num_warmup_steps=warmup,
                                       num_training_steps=self.steps_in_exp)
        self.optimized_param_id = {}

    def check_model_and_optimizer(self, reset_optimizer_state=False, **kwargs):
        self.model = self.model_adaptation()
        self.make_optimizer()

    # ------------------------------------------------------ forward / loss
    def _autocast(self):
        if not hardware.bf16_for(self.device, self.cfg.bf16, "train.bf16"):  # fp32 on a CPU without bf16
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def forward(self):
        model = self.engine_model if self.engine_model is not None else self.model
        labels = self.mbatch["labels"]
        self.logit_positions = target_positions(labels)
        with self._autocast():
            return model(input_ids=self.mbatch["input_ids"], attention_mask=self.mbatch["attention_mask"],
                         labels=labels, logits_to_keep=self.logit_positions,
                         shift_labels=labels[:, 1:][self.logit_positions[:, :-1]],
                         num_items_in_batch=self._step_tokens)

    def criterion(self):
        # The HF loss is sum(token NLL) / num_items_in_batch; gradients of all micro-batches and all ranks
        # add up to the gradient of the mean over the whole optimizer step (x world_size: DDP averages over ranks).
        return self.mb_output.loss * self.dist.world_size

    def step_token_mean(self, token_sum: torch.Tensor) -> torch.Tensor:
        """A micro-batch's sum of a per-target-token loss term, scaled like the task loss in `criterion`, so
        that over all micro-batches and processes it adds up to the term's mean over the step's target tokens
        (for CL methods that add a token-level term in `before_backward`, e.g. LwF's distillation)."""
        return token_sum / self._step_tokens * self.dist.world_size

    def optimizer_step(self):
        # the gradients are already averaged over processes: DDP (or FSDP's reduce-scatter) reduced them in the
        # last micro-step's backward; clipping a sharded model's DTensor gradients reduces their norm over ranks
        params = trainable_parameters(self.model)
        if self.cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.exp_step += 1
        self.global_step += 1

    @staticmethod
    def _target_tokens(batch) -> int:
        return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())

    # ------------------------------------------------------------ the loop
    def _train_exp(self, experience, eval_streams=None, **kwargs):
        self.exp_step = 0
        start_epoch = 0
        if self.resume_position and self.resume_position["exp_index"] == self.exp_index:
            start_epoch = self.resume_position["epoch"]
            self.exp_step = self.resume_position["exp_step"]
        bar = tqdm(total=self.steps_in_exp, initial=self.exp_step, desc=f"train exp {self.exp_index + 1}",
                   disable=not (self.progress and self.dist.is_main), dynamic_ncols=True)
        if self.sharded:
            self.engine_model = self.model   # sharded in place at construction
        else:
            self.engine_model = engine.data_parallel(self.model, self.dist, init_sync=not self._engine_synced)
        self._engine_synced = True
        try:
            for self.exp_epoch in range(start_epoch, self.train_epochs):
                if self.exp_step >= self.steps_in_exp:
                    break
                self.sampler.set_epoch(self.exp_epoch)
                self._before_training_epoch(**kwargs)
                if self._stop_training:
                    self._stop_training = False
                    break
                self.training_epoch(bar=bar, **kwargs)
                self._after_training_epoch(**kwargs)
        finally:
            bar.close()
            self.engine_model = None   # its reducer's hooks go with it; the next experience wraps afresh
        self.resume_position = None

    def training_epoch(self, bar=None, **kwargs):
        accum = self.accumulation
        iterator = iter(self.dataloader)
        self.exp_microbatch = 0
        if self.resume_position and self.resume_position["exp_index"] == self.exp_index \
                and self.resume_position["epoch"] == self.exp_epoch:
            skip = self.resume_position["microbatch"]
            for _ in islice(iterator, skip):
                pass
            self.exp_microbatch = skip
            self.resume_position = None
        while self.exp_step < self.steps_in_exp and not self._stop_training:
            group = list(islice(iterator, accum))
            if not group:
                break
            self._step_tokens = max(1, self.dist.sum_int(sum(self._target_tokens(b) for b in group)))
            self.optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for i, self.mbatch in enumerate(group):
                self._unpack_minibatch()
                self._before_training_iteration(**kwargs)
                self.loss = self._make_empty_loss()
                with engine.no_sync(self.engine_model, sync=i == len(group) - 1):
                    self._before_forward(**kwargs)
                    self.mb_output = self.forward()
                    self._after_forward(**kwargs)
                    self.loss += self.criterion()
                    self._before_backward(**kwargs)
                    self.backward()
                    self._after_backward(**kwargs)
                step_loss += float(self.loss.detach()) / self.dist.world_size
                self.exp_microbatch += 1
                if i == len(group) - 1:
                    self._before_update(**kwargs)
                    self.optimizer_step()
                    self.last_loss = self.dist.sum_float(step_loss)
                    self._after_update(**kwargs)
                self._after_training_iteration(**kwargs)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{self.last_loss:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
