"""Peak memory of one measured stretch: device memory on CUDA, process RSS on CPU.

On Linux the RSS high-water mark (VmHWM) is reset by writing "5" to
/proc/self/clear_refs; where that is refused (some sandboxes) a thread samples
RSS every few milliseconds instead, which can miss short spikes, and
`PeakMemory.method` says which was used.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Optional

import psutil
import torch

CLEAR_REFS = Path("/proc/self/clear_refs")
STATUS = Path("/proc/self/status")


def _read_hwm() -> Optional[int]:
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return _read_hwm() is not None


class _RssSampler(threading.Thread):
    def __init__(self, interval_s: float = 0.002):
        super().__init__(daemon=True)
        self.interval_s = interval_s
        self.process = psutil.Process()
        self.peak = self.process.memory_info().rss
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def stop(self) -> int:
        self.stopped.set()
        self.join()
        return max(self.peak, self.process.memory_info().rss)


class PeakMemory:
    """`with PeakMemory(device) as m: ...` then `m.bytes`."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.bytes = 0
        self.method = ""
        self._sampler: Optional[_RssSampler] = None

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.method = "torch.cuda.max_memory_allocated"
        elif _reset_hwm():
            self.method = "VmHWM"
        else:
            self._sampler = _RssSampler()
            self._sampler.start()
            self.method = "rss-sampling"
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device)
        elif self._sampler is not None:
            self.bytes = self._sampler.stop()
        else:
            self.bytes = _read_hwm() or 0


CGROUP_FILES = (  # (limit, usage): cgroup v2, then v1
    (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current")),
    (Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"), Path("/sys/fs/cgroup/memory/memory.usage_in_bytes")),
)


def cgroup_headroom() -> Optional[int]:
    """limit - usage of this container's memory cgroup (a pod's memory limit), if it has one."""
    for limit_file, usage_file in CGROUP_FILES:
        try:
            limit, usage = limit_file.read_text().strip(), int(usage_file.read_text())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:  # "max" or a huge v1 number: no limit
            return max(0, int(limit) - usage)
    return None


def available_bytes(device: torch.device) -> int:
    """Memory a new allocation may still use on this device (host: the pod's limit counts too)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free
    host = psutil.virtual_memory().available
    headroom = cgroup_headroom()
    return host if headroom is None else min(host, headroom)
