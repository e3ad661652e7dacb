"""The 2-node accelerate config parses with accelerate's own loader into the launch docs/scale.md describes
(2 machines, 16 processes in all, multi-GPU data parallel, static rendezvous)."""

from __future__ import annotations

from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

from clsharelora.paths import PROJECT_ROOT


def test_two_node_accelerate_config_is_what_the_docs_say():
    cfg = load_config_from_file(str(PROJECT_ROOT / "configs" / "accelerate" / "2nodes.yaml"))
    assert cfg.distributed_type == DistributedType.MULTI_GPU
    assert (cfg.num_machines, cfg.num_processes, cfg.machine_rank) == (2, 16, 0)
    assert cfg.rdzv_backend == "static" and cfg.main_process_port == 29500 and cfg.mixed_precision == "no"
