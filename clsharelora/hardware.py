"""What the CPU this process runs on can actually do: how many threads it may really use, and whether bf16
runs natively on it.

Threads: torch sizes its OpenMP pool from the machine's core count (c10's `defaultNumThreads`: cpuinfo's
physical cores), which ignores the affinity mask and the cgroup CPU quota that containers and batch
schedulers use to limit a job. A pool wider than the CPU the job may use makes every parallel region wait
for descheduled threads. So the count comes from min(affinity mask, floor(cgroup quota)), divided among the
processes of a multi-process launch on this machine (LOCAL_WORLD_SIZE); an explicit OMP_NUM_THREADS wins.

bf16: on a CPU without bf16 instructions (AVX2-only x86: no avx512_bf16 / amx_bf16) torch's bf16 GEMM
does not reach oneDNN and runs ~100x slower than fp32, so a bf16 autocast request on such a CPU falls
back to fp32 with one warning line. CUDA is unaffected.
"""

from __future__ import annotations

import functools
import math
import os
import platform
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from .errors import ConfigError

#: marks an OMP_NUM_THREADS that clsharelora exported itself (children re-derive it; it is no user setting)
CHOSEN_ENV = "CLSHARELORA_CPU_THREADS"


# ----------------------------------------------------------------------------------------- threads
@dataclass(frozen=True)
class CpuLimit:
    """A cgroup CPU bandwidth limit: `cpus` = quota / period, and where it was read."""

    cpus: float
    quota_us: int
    period_us: int
    source: str


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    source: str                  # "OMP_NUM_THREADS" | "cgroup quota" | "affinity"
    reason: str
    affinity: int
    quota_cpus: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo octal."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _cgroup_dirs(root: Path) -> list[tuple[str, Path, Path]]:
    """(version, leaf dir, mount point) of this process's cgroups that can hold a CPU limit: the v2 unified
    one and the v1 hierarchy with the `cpu` controller, resolved through /proc/self/mountinfo."""
    cgroups = _read(root / "proc/self/cgroup")
    mountinfo = _read(root / "proc/self/mountinfo")
    if not cgroups or not mountinfo:
        return []
    paths: dict[str, str] = {}                     # "v2" or "v1" -> this process's cgroup path
    for line in cgroups.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hier, controllers, path = parts
        if hier == "0" and controllers == "":
            paths["v2"] = path
        elif "cpu" in controllers.split(","):
            paths["v1"] = path
    out = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3:
            continue
        fstype, super_options = tail[0], tail[2].split(",")
        if fstype == "cgroup2":
            version = "v2"
        elif fstype == "cgroup" and "cpu" in super_options:
            version = "v1"
        else:
            continue
        if version not in paths:
            continue
        mount_root, mount_point = _unescape(fields[3]), Path(_unescape(fields[4]))
        path = paths[version]
        # A process in a cgroup namespace sees paths relative to the mount's root; without one (older
        # containers) it may see the host path, which lies under the mount root or not at all.
        if mount_root != "/" and (path == mount_root or path.startswith(mount_root.rstrip("/") + "/")):
            path = path[len(mount_root.rstrip("/")):]
        elif mount_root != "/":
            path = "/"
        mount = root / str(mount_point).lstrip("/")
        out.append((version, mount / path.lstrip("/"), mount))
    return out


def _limit_at(version: str, directory: Path) -> CpuLimit | None:
    if version == "v2":
        text = _read(directory / "cpu.max")
        if not text or len(text.split()) != 2 or text.split()[0] == "max":
            return None
        quota, period = (int(x) for x in text.split())
    else:
        q, p = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
        if q is None or p is None:
            return None
        quota, period = int(q.strip()), int(p.strip())
    if quota <= 0 or period <= 0:                  # v1 writes -1 for "no limit"
        return None
    name = "cpu.max" if version == "v2" else "cpu.cfs_quota_us"
    return CpuLimit(cpus=quota / period, quota_us=quota, period_us=period,
                    source=f"cgroup {version} {directory / name}")


def cgroup_cpu_limit(root: str | Path = "/") -> CpuLimit | None:
    """The tightest cgroup CPU quota over this process's cgroup and its ancestors (a parent's limit binds
    its children), v1 and v2 alike; None when no quota is set or no cgroup information is readable."""
    root = Path(root)
    limits = []
    for version, leaf, mount in _cgroup_dirs(root):
        directory = leaf
        while True:
            try:
                limit = _limit_at(version, directory)
            except ValueError:
                limit = None
            if limit:
                limits.append(limit)
            if directory == mount or mount not in directory.parents:
                break
            directory = directory.parent
    return min(limits, key=lambda x: x.cpus, default=None)


def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (cpusets show up here too)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def usable_cpus(root: str | Path = "/", affinity: int | None = None) -> int:
    """CPUs this process may keep busy: its affinity mask, capped by the cgroup CPU quota (floored, >= 1)."""
    affinity = affinity_cpus() if affinity is None else affinity
    limit = cgroup_cpu_limit(root)
    return max(1, min(affinity, math.floor(limit.cpus))) if limit else affinity


def choose_cpu_threads(env: Mapping[str, str] | None = None, root: str | Path = "/",
                       affinity: int | None = None) -> ThreadChoice:
    """Threads for torch/OpenMP: OMP_NUM_THREADS when the user set it, else min(affinity, floor(quota)) //
    LOCAL_WORLD_SIZE, at least 1. `root`/`affinity` exist so tests can hand in a fake /proc and /sys tree."""
    env = os.environ if env is None else env
    affinity = affinity_cpus() if affinity is None else affinity
    limit = cgroup_cpu_limit(root)
    quota = limit.cpus if limit else None
    user = (env.get("OMP_NUM_THREADS") or "").strip()
    if user and user != env.get(CHOSEN_ENV):
        first = user.split(",")[0].strip()        # OpenMP allows a nesting list "4,2": the outer level counts
        if not first.isdigit() or int(first) < 1:
            raise ConfigError(f"OMP_NUM_THREADS={user!r}: expected a positive integer (or unset it to let "
                              f"clsharelora choose from the affinity mask and the cgroup CPU quota)")
        return ThreadChoice(int(first), "OMP_NUM_THREADS", f"OMP_NUM_THREADS={user} set by the user "
                            f"(affinity {affinity} CPUs, cgroup quota {_fmt_quota(limit)})", affinity, quota)
    if limit and math.floor(limit.cpus) < affinity:
        cpus, source = max(1, math.floor(limit.cpus)), "cgroup quota"
        reason = (f"cgroup CPU quota {limit.quota_us}/{limit.period_us} us = {limit.cpus:g} CPUs ({limit.source}) "
                  f"below the affinity mask's {affinity} CPUs")
    else:
        cpus, source = affinity, "affinity"
        reason = f"affinity mask allows {affinity} CPUs; cgroup quota {_fmt_quota(limit)}"
    local = env.get("LOCAL_WORLD_SIZE", "1")      # torchrun / accelerate: processes sharing this machine
    if local.isdigit() and int(local) > 1:
        return ThreadChoice(max(1, cpus // int(local)), source, f"{reason}, shared by LOCAL_WORLD_SIZE={local} "
                            f"processes", affinity, quota)
    return ThreadChoice(cpus, source, reason, affinity, quota)


def _fmt_quota(limit: CpuLimit | None) -> str:
    return f"{limit.cpus:g} CPUs ({limit.source})" if limit else "none"


_applied: ThreadChoice | None = None


def apply_cpu_threads() -> ThreadChoice:
    """Apply the choice once per process, at start-up: exported as OMP_NUM_THREADS/MKL_NUM_THREADS (so the
    OpenMP pool is sized right when torch loads, and subprocesses inherit it), and set in torch if it is
    already imported (also a user's OMP_NUM_THREADS, which the OpenMP runtime only reads when it loads)."""
    global _applied
    choice = choose_cpu_threads()
    if choice.source != "OMP_NUM_THREADS":
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = os.environ[CHOSEN_ENV] = str(choice.threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(choice.threads)
    _applied = choice
    return choice


def thread_record() -> dict[str, Any]:
    """The choice for environment.json / bench JSON: the applied one, else what would be chosen."""
    import torch

    choice = _applied or choose_cpu_threads()
    return {**choice.to_json(), "applied": _applied is not None, "torch_threads": torch.get_num_threads()}


# -------------------------------------------------------------------------------------------- bf16
#: instructions that compute in bf16 natively: name in /proc/cpuinfo -> name in torch.cpu.get_capabilities()
NATIVE_BF16 = {"avx512_bf16": "avx512_bf16", "amx_bf16": "amx_bf16",   # x86
               "bf16": "bf16", "svebf16": "sve_bf16"}                    # ARM64


@dataclass(frozen=True)
class Bf16Support:
    native: bool
    instructions: tuple[str, ...]     # the native bf16 instructions found
    reason: str


def cpu_bf16_support(capabilities: Mapping[str, Any], cpuinfo_flags: Iterable[str] = (),
                     torch_bf16_gemm: bool | None = None, cpu: str = "this CPU") -> Bf16Support:
    """bf16 is native when the CPU has bf16 instructions (torch's capability map, or /proc/cpuinfo where
    torch does not report them) and torch routes bf16 GEMM to oneDNN (`torch_bf16_gemm`:
    torch.ops.mkldnn._is_mkldnn_bf16_supported(), the check torch itself uses; None when unknown).
    AVX-512 without avx512_bf16 counts as not native: oneDNN emulates bf16 there, slower than fp32."""
    flags = set(cpuinfo_flags)
    found = tuple(sorted({cap for flag, cap in NATIVE_BF16.items() if capabilities.get(cap) is True or flag in flags}))
    isa = capabilities.get("capability") or "unknown"
    if not found:
        return Bf16Support(False, (), f"no native bf16 on {cpu} (torch CPU capability {isa}): none of "
                                      f"{', '.join(sorted(set(NATIVE_BF16.values())))}")
    if torch_bf16_gemm is False:
        return Bf16Support(False, found, f"{cpu} has {', '.join(found)} but torch's oneDNN bf16 path is "
                                         f"unavailable (torch CPU capability {isa})")
    return Bf16Support(True, found, f"native bf16 on {cpu}: {', '.join(found)} (torch CPU capability {isa})")


def read_cpuinfo(path: str | Path = "/proc/cpuinfo") -> tuple[str | None, set[str]]:
    """(model name, flags) of the first processor in /proc/cpuinfo (x86 `flags`, ARM `Features`)."""
    model, flags = None, set()
    text = _read(Path(path)) or ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
        if not line.strip() and (model or flags):
            break
    return model, flags


@functools.lru_cache(maxsize=None)
def cpu_facts() -> dict[str, Any]:
    """CPU model, torch's CPU capability (the ISA its kernels dispatch to) and native bf16, for records."""
    import torch

    model, flags = read_cpuinfo()
    try:
        caps = dict(torch.cpu.get_capabilities())
    except (AttributeError, RuntimeError):
        caps = {}
    capability = torch.backends.cpu.get_cpu_capability()
    try:
        gemm = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        gemm = None
    model = model or caps.get("cpu_name") or platform.processor() or platform.machine()
    bf16 = cpu_bf16_support({**caps, "capability": capability}, flags, gemm, cpu=model)
    return {"cpu": model, "capability": capability, "bf16_native": bf16.native,
            "bf16_instructions": list(bf16.instructions), "bf16_reason": bf16.reason}


def cpu_record() -> dict[str, Any]:
    """CPU facts and the thread choice: environment.json's and every bench JSON's `cpu` field."""
    return {**cpu_facts(), "threads": thread_record()}


def machine_line(facts: Mapping[str, Any] | None = None) -> str:
    """One line naming the CPU, torch's capability, native bf16 and the threads: printed beside figures."""
    facts = facts or cpu_facts()
    threads = facts.get("threads") or thread_record()
    return (f"machine: {facts['cpu']}, torch CPU capability {facts['capability']}, native bf16 "
            f"{'yes' if facts['bf16_native'] else 'no'}, {threads['torch_threads']} torch threads "
            f"({threads['source']})")


_warned: set[str] = set()


def bf16_for(device, requested: bool, setting: str) -> bool:
    """Whether to autocast to bf16 on `device` for `setting` (e.g. "train.bf16"): as requested, except on a
    CPU without native bf16, where it is fp32 and one warning line is printed (once per setting)."""
    import torch

    if not requested or torch.device(device).type != "cpu":
        return bool(requested)
    facts = cpu_facts()
    if facts["bf16_native"]:
        return True
    if setting not in _warned:
        _warned.add(setting)
        print(f"warning: {setting}=true ignored, computing in fp32: {facts['bf16_reason']}", file=sys.stderr,
              flush=True)
    return False


def precision_record(device, settings: Mapping[str, bool]) -> dict[str, Any]:
    """For results.json: each bf16 setting as requested and as used on `device` (decided by `bf16_for`, so
    its warning comes at start-up, before any work), and why."""
    import torch

    dev = torch.device(device)
    out: dict[str, Any] = {"device": str(dev)}
    if dev.type == "cpu":
        facts = cpu_facts()
        out.update(cpu=facts["cpu"], capability=facts["capability"], bf16_native=facts["bf16_native"],
                   reason=facts["bf16_reason"])
    for name, requested in settings.items():
        used = bf16_for(dev, requested, name)
        out[name] = {"requested": bool(requested), "used": used,
                     **({"fallback": "fp32"} if requested and not used else {})}
    return out
