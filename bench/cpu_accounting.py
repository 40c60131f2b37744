"""Where the CPU went during a run: core-seconds of each process role, read from /proc (Linux).

Stage timings (decode, embed seconds summed over workers) are wall clock inside each task: on a machine with fewer
cores than busy processes they grow with the contention and do not say who took the cores. CPU time does. The
sampler takes every process born after it starts (a local Ray and its workers, started by the run) plus this
process (the driver), and classifies each by the titles Ray gives its workers.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

PROC = Path("/proc")
TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

# Ray titles its workers "ray::<what runs>": the read+decode map tasks, the embedding actors, the task that loads
# the model once to describe it. A pooled worker is "ray::IDLE" between tasks.
ROLE_BY_TITLE = (("read_task", "read"), ("MapWorker", "embed"), ("describe_model", "setup"))
ROLES = ("read", "embed", "setup", "driver", "ray")


def role_of(title: str, previous: str = "ray") -> str:
    """The role a process plays now; an idle worker keeps the role of its last task (its CPU in the interval
    before the sample was most likely that task's)."""
    for marker, role in ROLE_BY_TITLE:
        if marker in title:
            return role
    if not title or "IDLE" in title:  # no title: exiting, its cmdline already gone
        return previous
    return "ray"  # raylet, GCS, agents, a worker still starting: Ray's own share


def process_name(title: str) -> str:
    """A short name for a process of Ray's share: its Ray title (ray::IDLE, ray::_StatsActor), else its program
    (gcs_server, raylet), or for a Python program its script (dashboard/agent.py)."""
    words = title.split()
    if not words:
        return "?"
    if words[0].startswith("ray::"):
        return words[0]
    program = Path(words[0]).name
    if program.startswith("python"):
        script = next((Path(w) for w in words[1:] if w.endswith(".py")), None)
        if script is not None:
            return f"{script.parent.name}/{script.name}"
    return program


def _processes() -> dict[int, tuple[int, str, float]]:
    """pid -> (parent pid, title, CPU seconds so far) of every process readable now."""
    found = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # gone between the listing and the read
            continue
        fields = stat.rsplit(")", 1)[1].split()
        found[int(entry.name)] = (int(fields[1]), title, (int(fields[11]) + int(fields[12])) / TICKS_PER_SECOND)
    return found


def descendants(processes: dict[int, tuple[int, str, float]], root: int) -> set[int]:
    """The pids below `root` in the process tree."""
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in processes.items():
        children.setdefault(parent, []).append(pid)
    found, stack = set(), [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


class ProcessCpu:
    """Samples the CPU time of the run's processes in a thread; `summary(images)` gives core-seconds per role.

    A process that exits between two samples loses at most one interval of its CPU time (0.25 s by default); CPU
spent in an interval goes to the role the process has at its end.
    Without /proc it records nothing and says so."""

    def __init__(self, interval_s: float = 0.25) -> None:
        self.interval_s = interval_s
        self.available = (PROC / "self" / "stat").exists()
        self._driver_start = 0.0
        self._last: dict[int, float] = {}  # CPU seconds of each process at its last sample
        self._role: dict[int, str] = {}
        self._spent: dict[str, float] = dict.fromkeys(ROLES, 0.0)
        self._ray_by_name: dict[str, float] = {}  # Ray's share, by process_name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wall = 0.0

    def __enter__(self) -> ProcessCpu:
        if self.available:
            self._driver_start = time.process_time()
            processes = _processes()  # a Ray already running (tests, a notebook): only what the run adds counts
            self._last = {pid: processes[pid][2] for pid in descendants(processes, os.getpid())}
            self._wall = time.perf_counter()
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        processes = _processes()
        for pid in descendants(processes, os.getpid()):
            _, title, seconds = processes[pid]
            role = self._role[pid] = role_of(title, self._role.get(pid, "ray"))
            spent = max(0.0, seconds - self._last.get(pid, 0.0))
            self._spent[role] += spent
            if role == "ray" and spent:
                name = process_name(title)
                self._ray_by_name[name] = self._ray_by_name.get(name, 0.0) + spent
            self._last[pid] = seconds

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __exit__(self, *_: object) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._sample()
        self._wall = time.perf_counter() - self._wall
        self._driver = time.process_time() - self._driver_start

    def summary(self, images: int) -> dict[str, Any]:
        if self._thread is None:
            return {"cpu_note": "no /proc: CPU time not sampled"}
        seconds = {**self._spent, "driver": self._driver}
        total = sum(seconds.values())
        cores = os.cpu_count() or 1
        return {"cpu_seconds": {role: round(value, 2) for role, value in seconds.items()},
                "cpu_ms_per_image": {role: round(1000 * value / images, 1) if images else None
                                     for role, value in seconds.items()},
                "ray_cpu_seconds_by_process": {name: round(value, 2) for name, value in sorted(
                    self._ray_by_name.items(), key=lambda item: -item[1])},
                "cpu_wall_seconds": round(self._wall, 2),
                "cpu_busy_fraction": round(total / (self._wall * cores), 3) if self._wall else None}
