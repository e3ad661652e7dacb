"""LwF (Li & Hoiem 2016), as applied to LLMs: distil the model as it was before the experience.

From the second experience on, each micro-batch's loss gains

    lambda * T^2 * mean over the new task's target tokens of KL( softmax(z_old / T) || softmax(z_new / T) )

where z are next-token logits at the positions whose label is a target token, z_old from the teacher: the
model at the start of the experience. The teacher needs no second base model: its adapter weights are kept
as a second, frozen peft adapter ("lwf_teacher") on the same model, and the teacher forward switches the
active adapter to it under no_grad (in eval mode: no dropout) and back. Cost: one extra forward pass (no
backward) per micro-batch, plus one adapter's weights in memory. With lambda = 0 nothing of this runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin

from clsharelora.errors import ConfigError
from clsharelora.registry import register
from clsharelora.training.cl_base import CLContext, CLStrategy
from clsharelora.strategies import _adapter_copies as copies

TEACHER = "lwf_teacher"


def distillation_sum(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * sum over target tokens of KL(p_teacher/T || p_student/T); logits (target tokens, V): the
    positions that predict a target, as the template projects them (`CausalLMTemplate.logit_positions`)."""
    student = student_logits.float() / temperature
    teacher = teacher_logits.float() / temperature
    kl = F.kl_div(F.log_softmax(student, -1), F.log_softmax(teacher, -1), log_target=True, reduction="sum")
    return temperature ** 2 * kl


class LwFPlugin(SupervisedPlugin, supports_distributed=True):
    def __init__(self, model, *, lwf_lambda: float, temperature: float):
        super().__init__()
        self.model, self.lwf_lambda, self.temperature = model, lwf_lambda, temperature
        self.teacher_for = -1          # experience whose start the teacher adapter holds (-1: none yet)
        self.last_distillation = 0.0

    def before_training_exp(self, strategy, **kwargs):
        t = strategy.exp_index
        if self.lwf_lambda == 0 or t == 0 or self.teacher_for == t:   # a mid-experience resume keeps its teacher
            return
        self._ensure_teacher()
        copies.copy_weights(self.model, copies.TRAINED, TEACHER)
        self.teacher_for = t

    def _ensure_teacher(self) -> None:
        if TEACHER not in self.model.peft_config:
            copies.add_copy(self.model, TEACHER)

    @torch.no_grad()
    def teacher_logits(self, strategy) -> torch.Tensor:
        model, was_training = self.model, self.model.training
        model.base_model.set_adapter(TEACHER, inference_mode=True)
        model.eval()
        try:
            with strategy._autocast():
                return model(input_ids=strategy.mbatch["input_ids"], attention_mask=strategy.mbatch["attention_mask"],
                             logits_to_keep=strategy.logit_positions).logits   # the student's positions
        finally:
            model.train(was_training)
            model.base_model.set_adapter(copies.TRAINED)   # trainable again, the teacher frozen

    def before_backward(self, strategy, **kwargs):
        if self.lwf_lambda == 0 or self.teacher_for != strategy.exp_index:
            return
        teacher = self.teacher_logits(strategy)
        kd = distillation_sum(strategy.mb_output.logits, teacher, self.temperature)
        term = self.lwf_lambda * strategy.step_token_mean(kd)
        strategy.loss = strategy.loss + term
        self.last_distillation = float(kd.detach())

    def state_dict(self) -> dict:
        tensors = copies.tensors(self.model, TEACHER) if self.teacher_for >= 0 else None
        return {"teacher_for": self.teacher_for, "teacher": tensors}

    def load_state_dict(self, state: dict) -> None:
        self.teacher_for = int(state["teacher_for"])
        if state["teacher"] is not None:
            self._ensure_teacher()
            copies.load_tensors(self.model, TEACHER, state["teacher"])


@register("lwf", "cl")
class LwF(CLStrategy):
    """Defaults: lambda = 1 and T = 2 (Li & Hoiem 2016 use lambda_o = 1 and T = 2)."""

    defaults = {"lwf_lambda": 1.0, "temperature": 2.0}
    option_help = {"lwf_lambda": "weight of the distillation term lambda T^2 KL(p_old/T || p_new/T)",
                   "temperature": "softmax temperature T of teacher and student"}

    def validate(self) -> None:
        lam, temp = self.options["lwf_lambda"], self.options["temperature"]
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or lam < 0:
            raise ConfigError(f"lwf: option 'lwf_lambda' must be a number >= 0, got {lam!r}")
        if isinstance(temp, bool) or not isinstance(temp, (int, float)) or temp <= 0:
            raise ConfigError(f"lwf: option 'temperature' must be a number > 0, got {temp!r}")

    def check_model(self, model) -> None:
        if not copies.lora_layers(model):
            raise ConfigError("lwf works on peft LoRA adapters (their layers are copied and compared): use "
                              "--strategy lora or sharelora (any variant); this adapter has none")

    def plugins(self, context: CLContext) -> list:
        if context.model is None:
            raise ConfigError("lwf needs the model in its CLContext")
        self.check_model(context.model)
        return [LwFPlugin(context.model, lwf_lambda=float(self.options["lwf_lambda"]),
                          temperature=float(self.options["temperature"]))]
