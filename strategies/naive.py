"""Naive sequential fine-tuning: train on each experience in turn, nothing to protect old tasks."""

from clsharelora.registry import register
from clsharelora.training.cl_base import CLStrategy


@register("naive", "cl")
class Naive(CLStrategy):
    defaults = {}
