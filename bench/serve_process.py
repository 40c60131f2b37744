"""A real `cbmir serve` in its own process on 127.0.0.1 for a benchmark: started, waited for, stopped."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Served:
    process: subprocess.Popen
    target: str
    log_path: Path


def start_serve(serve_args: list[str], log_path: Path, env: dict[str, str] | None = None,
                timeout_s: float = 300.0) -> Served:
    """`cbmir serve <serve_args> --port <free>` with stderr to `log_path`; returns once health says SERVING."""
    import grpc

    from cbmir.services.query.client import RetrievalClient
    from cbmir.services.store.milvus_server import free_ports

    port = free_ports(1)[0]
    command = [sys.executable, "-m", "cbmir.cli", "serve", *serve_args, "--port", str(port)]
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log_file)
    served = Served(process, f"127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + timeout_s
    with RetrievalClient(served.target, timeout=2) as client:
        while True:
            try:
                if client.health() == "SERVING":
                    return served
            except grpc.RpcError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                stop_serve(served)
                raise RuntimeError(f"cbmir serve did not come up: {log_path.read_text()[-2000:]}")
            time.sleep(0.5)


def stop_serve(served: Served) -> None:
    """SIGINT (serve's clean stop), then SIGKILL after 30 s."""
    served.process.send_signal(signal.SIGINT)
    try:
        served.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        served.process.kill()
        served.process.wait()
