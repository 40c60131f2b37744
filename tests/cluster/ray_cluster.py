"""A real two-node Ray cluster on 127.0.0.1: `ray start --head` plus `ray start --address`, torn down by process group.

Every port is chosen free (a test session's own local Ray already holds the defaults, e.g. the dashboard agent's
52365). Ray 2.5x+ turns token authentication on for `ray start --head`: the cluster gets its own random token
(RAY_AUTH_MODE=token, RAY_AUTH_TOKEN) which its nodes and drivers take from `env`. Each `ray start --block` runs in
its own session; teardown signals exactly the processes it started and their descendants (Ray workers set their
own process group): never `ray stop`, which kills every Ray on the machine, the test session's own included.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
LOOPBACK = "127.0.0.1"


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((LOOPBACK, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _node_port_flags() -> list[str]:
    names = ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
             "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port")
    return [f"{name}={port}" for name, port in zip(names, free_ports(len(names)), strict=True)]


class LocalRayCluster:
    """`with LocalRayCluster() as cluster: ray.init(address=cluster.address)`; nodes carry custom resources."""

    # Generous: beside other test workers starting their own Ray and Milvus, two `ray start` take minutes.
    def __init__(self, head_cpus: int = 1, worker_cpus: int = 1, start_timeout: float = 240.0) -> None:
        self.head_cpus = head_cpus
        self.worker_cpus = worker_cpus
        self.start_timeout = start_timeout
        self.port = 0
        # Short: Ray's unix sockets live under it and a socket path is limited to 107 bytes.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))
        self.processes: list[subprocess.Popen[bytes]] = []
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0",
                    "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        self.started_pids: set[int] = set()
        self.nodes: list[dict] = []  # as alive_nodes() last saw them

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def __enter__(self) -> LocalRayCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.temp_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats",  # noqa: S603
                                    f"--node-ip-address={LOOPBACK}", *args, *_node_port_flags()],
                                   env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        log.close()
        self.processes.append(process)

    def start(self) -> None:
        self.port, client_port = free_ports(2)
        self._spawn("head", ["--head", f"--port={self.port}", f"--num-cpus={self.head_cpus}", "--num-gpus=0",
                             "--resources", json.dumps({"head": 1}), "--include-dashboard=false",
                             f"--ray-client-server-port={client_port}", f"--temp-dir={self.temp_dir}"])
        self.wait_for_port(self.port)
        self._spawn("worker", [f"--address={self.address}", f"--num-cpus={self.worker_cpus}", "--num-gpus=0",
                               "--resources", json.dumps({"worker_node": 1})])
        self.wait_for_nodes(2)

    def wait_for_port(self, port: int) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=1):
                return
            if any(p.poll() is not None for p in self.processes) or time.monotonic() > deadline:
                raise RuntimeError(f"the Ray head never listened on {port}:\n{self.log_tail()}")
            time.sleep(0.3)

    def alive_nodes(self) -> list[dict]:
        """Nodes as the GCS reports them, asked from a throwaway process (this one may hold another Ray)."""
        code = ("import json, sys, ray; ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False); "
                "print(json.dumps([{'id': n['NodeID'], 'resources': n['Resources']} for n in ray.nodes() "
                "if n['Alive']]))")
        out = subprocess.run([sys.executable, "-c", code, self.address], env=self.env, capture_output=True, text=True,  # noqa: S603
                             timeout=60, check=False)
        if out.returncode != 0:
            return []
        return json.loads(out.stdout.strip().splitlines()[-1])

    def wait_for_nodes(self, count: int) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"ray start exited with {process.returncode}:\n{self.log_tail()}")
            self.nodes = self.alive_nodes()
            if len(self.nodes) >= count:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{count} Ray node(s) not up after {self.start_timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(1.0)

    def log_tail(self, lines: int = 30) -> str:
        tail = []
        for name in ("head", "worker"):
            path = self.temp_dir / f"{name}.log"
            if path.exists():
                tail += [f"[{name}] {line}" for line in path.read_text(errors="replace").splitlines()[-lines:]]
        return "\n".join(tail)

    def descendants(self) -> set[int]:
        """Live processes under the `ray start` processes (by parent pid), them included."""
        parents: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    stat = (entry / "stat").read_text()
                    fields = stat[stat.rindex(")") + 2:].split()
                    if fields[0] != "Z":
                        parents[int(entry.name)] = int(fields[1])
        found = {p.pid for p in self.processes if p.pid in parents}
        grew = True
        while grew:
            children = {pid for pid, parent in parents.items() if parent in found} - found
            found |= children
            grew = bool(children)
        return found

    def stop(self) -> None:
        """SIGTERM each `ray start --block` group (worker node first), then SIGKILL whatever of it is left."""
        self.started_pids |= self.descendants()
        for process in reversed(self.processes):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
        self.started_pids |= self.descendants()
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
        for pid in self.leftover_pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        self.processes = []
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def leftover_pids(self) -> list[int]:
        """Processes this cluster started (seen at teardown) that are still alive, zombies aside (none after stop)."""
        alive = []
        for pid in sorted(self.started_pids):
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = Path(f"/proc/{pid}/stat").read_text()
                if stat[stat.rindex(")") + 2:].split()[0] != "Z":
                    alive.append(pid)
        return alive
