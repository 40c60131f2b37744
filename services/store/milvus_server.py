"""MilvusServer: a real Milvus 2.3 standalone (PyPI `milvus`) on free 127.0.0.1 ports, started and stopped cleanly."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
# The template keys (PyPI `milvus` config.yaml.template) of every port the standalone process listens on.
PORT_KEYS = (
    "proxy_port", "etcd_peer_port", "proxy_internal_port", "etcd_port", "root_coord_port", "query_coord_port",
    "query_node_port",
    "index_coord_port", "index_node_port", "data_coord_port", "data_node_port",
)
# Each component advertises this address instead of "the first unicast address" of the machine.
IP_KEYS = ("rootCoord.ip", "proxy.ip", "queryCoord.ip", "queryNode.ip", "indexNode.ip", "dataCoord.ip", "dataNode.ip")
GRACEFUL_STOP_SECONDS = 3
# Segment sizing for collections of millions of 1024-d rows (4 KB each): a search visits every segment of the
# partitions it touches, one HNSW graph each, so fewer, larger segments answer faster (docs/benchmarks.md "Where a
# server query spends its time"). The template's 512 MB with sealProportion 0.23 seals a growing segment at
# ~118 MB (~29k rows); 2048 MB sealed at full size makes ~500k-row segments. A growing segment is also sealed at
# maxBinlogFileNumber binlog files (32 in the template), one per 16 MB insert-buffer flush: 32 x 16 MB capped the
# 10^6 run's segments at ~130k rows whatever maxSize said; 128 files let them reach maxSize. Any --set wins.
SEGMENT_SETTINGS = {"dataCoord.segment.maxSize": "2048", "dataCoord.segment.sealProportion": "1",
                    "dataCoord.segment.maxBinlogFileNumber": "128"}
# Erasure (cbmir erase, docs/pacs.md "Erasure"): a compaction leaves the old segment files (which still hold the
# erased rows) for the garbage collector, which by default runs hourly and keeps files of dropped segments 3 h more;
# the inserts stay in rocksmq for 3 days. Here: GC every minute, dropped files gone a minute later, the insert log
# kept 30 min (long enough for a growing segment to be sealed and flushed, dataCoord.segment.maxIdleTime 600 s,
# before its log may go). Any --set of the same key wins.
ERASURE_SETTINGS = {"dataCoord.gc.interval": "60", "dataCoord.gc.dropTolerance": "60",
                    "rocksmq.retentionTimeInMinutes": "30"}
_PR_SET_PDEATHSIG = 1


class MilvusServerError(RuntimeError):
    """The server could not be started; the message carries the tail of its log."""

# Milvus's built-in administrator and its default password, on a server started with authorization on.
DEFAULT_ROOT_TOKEN = "root:Milvus"

def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """`count` distinct ports the kernel says are free now (held open together so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def milvus_binary_dir() -> Path:
    """The unpacked `milvus` binary and its libraries, extracted once into a user cache and reused."""
    try:
        import milvus
    except ImportError:
        raise MilvusServerError(
            "the PyPI package `milvus` (a Milvus 2.3 standalone) is not installed: pip install 'cbmir[server]' "
            "(or milvus==2.3.5), or point --milvus-uri at a Milvus you run yourself"
        ) from None
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cbmir" / f"milvus-{milvus.__version__}"
    # The package checks an md5 beside each file, so a second call extracts nothing.
    milvus._initialize_data_files(str(cache))
    return cache / "bin"


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if this Python dies (even by SIGKILL), the kernel kills Milvus,
    # so no orphan keeps the ports and the data directory.
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class MilvusServer:
    """A Milvus standalone on loopback: `with MilvusServer() as server: MilvusStore(server.uri)`.

    Runs the binary of the PyPI `milvus` package directly (not its `milvus-server` wrapper, which cannot set the
    /healthz port and SIGKILLs the server one second after Ctrl-C), with every port chosen free, every component
    advertising 127.0.0.1, its own process group, a readiness wait (healthz, then a real client call), and a stop
    that interrupts, waits, then kills the whole group.
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        port: int | None = None,
        startup_timeout: float = 120.0,
        stop_timeout: float = 10.0,
        settings: dict[str, str] | None = None,
    ) -> None:
        self._given_data_dir = Path(data_dir).resolve() if data_dir else None
        self.data_dir: Path | None = self._given_data_dir
        self.requested_port = port
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        # Extra milvus.yaml keys, dotted (e.g. dataCoord.segment.maxSize=2048): tuning for large collections.
        self.settings = {**SEGMENT_SETTINGS, **ERASURE_SETTINGS, **(settings or {})}
        self.ports: dict[str, int] = {}
        self.healthz_port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._log_files: list = []

    # -- addresses -------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self.ports["proxy_port"]

    @property
    def uri(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def healthz_url(self) -> str:
        return f"http://{LOOPBACK}:{self.healthz_port}/healthz"

    @property
    def log_dir(self) -> Path:
        assert self.data_dir is not None
        return self.data_dir / "logs"

    # -- lifecycle -------------------------------------------------------------------------------------

    def __enter__(self) -> MilvusServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> MilvusServer:
        if self.process is not None:
            return self
        from milvus import MilvusServerConfig

        binary_dir = milvus_binary_dir()
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="cbmir-milvus-"))
        chosen = free_ports(len(PORT_KEYS) + 1)
        self.ports = dict(zip(PORT_KEYS, chosen, strict=False))
        self.healthz_port = chosen[-1]
        if self.requested_port:
            self.ports["proxy_port"] = self.requested_port
        config = MilvusServerConfig(data_dir=str(self.data_dir),
                                    **{k: v for k, v in self.ports.items() if k != "etcd_peer_port"})
        config.set("etcd_log_level", "warn")
        for key in IP_KEYS:
            config.set(key, LOOPBACK)
        # Standalone has no other query node to hand segments to, so a graceful stop would wait out the whole
        # timeout (1800 s by default); writes are already durable in the WAL, so a few seconds suffice.
        config.set("common.gracefulStopTimeout", GRACEFUL_STOP_SECONDS)
        for key, value in self.settings.items():
            config.set(key, _typed_template_value(config, key, value))
        try:
            config.resolve()  # writes data_dir/configs/milvus.yaml; fails if a chosen port was taken meanwhile
        except RuntimeError as error:
            raise MilvusServerError(
                f"cannot configure Milvus in {self.data_dir}: {error} (is the port free?)") from None
        self._check_settings_applied()
        self._pin_embedded_etcd()

        env = {
            **os.environ,
            "DEPLOY_MODE": "STANDALONE",
            "METRICS_PORT": str(self.healthz_port),
            "MILVUS_RUN_DIR": str(self.data_dir / "run"),
            "LD_LIBRARY_PATH": f"{binary_dir}:{os.environ.get('LD_LIBRARY_PATH', '')}",
        }
        self._log_files = [open(self.log_dir / f"milvus-{name}.log", "wb") for name in ("stdout", "stderr")]  # noqa: SIM115
        started = time.monotonic()
        self.process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            [str(binary_dir / "milvus"), "run", "standalone"],
            cwd=self.data_dir, env=env, stdin=subprocess.DEVNULL,
            stdout=self._log_files[0], stderr=self._log_files[1],
            start_new_session=True, preexec_fn=_die_with_parent,  # noqa: PLW1509 - only prctl, async-signal-safe
        )
        atexit.register(self.stop)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        log.info("milvus server ready", extra={"uri": self.uri, "data_dir": str(self.data_dir),
                                               "seconds": round(time.monotonic() - started, 1)})
        return self

    def _check_settings_applied(self) -> None:
        """The `milvus` package drops a key its template lacks without a word: refuse it instead."""
        import yaml

        assert self.data_dir is not None
        written = yaml.safe_load((self.data_dir / "configs" / "milvus.yaml").read_text())
        for key, value in self.settings.items():
            if "." not in key:  # a template variable (authorization_enabled): checked when it was typed
                continue
            node: object = written
            for part in key.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            if node is None or str(node) != str(value):
                raise MilvusServerError(f"Milvus setting {key}={value} was not applied: no such key in "
                                        "milvus.yaml (see the milvus package's config.yaml.template)")

    def _pin_embedded_etcd(self) -> None:
        """The embedded etcd ignores `etcd.endpoints` and listens on localhost:2379/2380 unless given its own
        config file; without this a second server (or a real etcd) on the machine collides with the first."""
        assert self.data_dir is not None
        client, peer = self.ports["etcd_port"], self.ports["etcd_peer_port"]
        etcd_config = self.data_dir / "configs" / "etcd.yaml"
        etcd_config.write_text(
            "name: cbmir\n"
            f"listen-client-urls: http://{LOOPBACK}:{client}\n"
            f"advertise-client-urls: http://{LOOPBACK}:{client}\n"
            f"listen-peer-urls: http://{LOOPBACK}:{peer}\n"
            f"initial-advertise-peer-urls: http://{LOOPBACK}:{peer}\n"
            f"initial-cluster: cbmir=http://{LOOPBACK}:{peer}\n"
        )
        milvus_yaml = self.data_dir / "configs" / "milvus.yaml"
        text = milvus_yaml.read_text()
        text = text.replace("\netcd:\n", f"\netcd:\n  config:\n    path: {etcd_config}\n", 1)
        text = text.replace(f"endpoints: localhost:{client}", f"endpoints: {LOOPBACK}:{client}", 1)
        milvus_yaml.write_text(text)

    def _wait_ready(self) -> None:
        from pymilvus import MilvusClient

        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.process is None or self.process.poll() is not None:
                code = self.process.returncode if self.process else None
                raise MilvusServerError(f"Milvus exited during startup (code {code}); "
                                        f"its log ends with:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise MilvusServerError(f"Milvus not ready after {self.startup_timeout:.0f} s at {self.uri}; "
                                        f"its log ends with:\n{self.log_tail()}")
            if self._healthy():
                try:
                    client = MilvusClient(uri=self.uri, token=self._probe_token(), timeout=5)
                    client.list_collections()
                    client.close()
                    return
                except Exception as error:  # noqa: BLE001 - any client failure means "not yet"
                    log.debug("milvus healthy but not serving yet: %s", error)
            time.sleep(0.2)

    def _probe_token(self) -> str:
        """With authorization on, a new server answers only its built-in administrator (default password)."""
        enabled = {k: str(v).lower() for k, v in self.settings.items()
                   if k in ("authorization_enabled", "common.security.authorizationEnabled")}
        return DEFAULT_ROOT_TOKEN if "true" in enabled.values() else ""

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.healthz_url, timeout=2) as reply:  # noqa: S310 - loopback http
                return b"OK" in reply.read()
        except (OSError, urllib.error.URLError):
            return False

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait(self) -> int:
        """Block until the server exits (for the foreground CLI)."""
        assert self.process is not None
        return self.process.wait()

    def stop(self) -> None:
        """SIGINT (Milvus stops gracefully), wait, then SIGKILL the whole process group: nothing survives."""
        process, self.process = self.process, None
        if process is not None:
            atexit.unregister(self.stop)
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGINT)
                try:
                    process.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    log.warning("milvus did not stop in %.0f s; killing its process group", self.stop_timeout)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        for handle in self._log_files:
            handle.close()
        self._log_files = []
        if self._given_data_dir is None and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None

    def log_tail(self, lines: int = 20) -> str:
        if self.data_dir is None:
            return ""
        tail: list[str] = []
        for name in ("milvus-stderr.log", "milvus-stdout.log"):
            path = self.log_dir / name
            if path.exists():
                tail += path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(tail[-lines:])


def _typed_template_value(config: Any, key: str, value: str) -> object:
    """A value for one of the template's own variables (`authorization_enabled`, ...) in the type it declares,
    since the package ignores a value of another type without a word; dotted milvus.yaml keys pass as text."""
    if "." in key:
        return value
    if key not in config.configurable_items:
        raise MilvusServerError(f"unknown Milvus setting {key!r}: use a dotted milvus.yaml key or one of "
                                f"{', '.join(sorted(config.configurable_items))}")
    kind = config.configurable_items[key][0]
    if kind is bool:
        if value.lower() not in ("true", "false"):
            raise MilvusServerError(f"Milvus setting {key} takes true or false, got {value!r}")
        return value.lower() == "true"
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise MilvusServerError(f"Milvus setting {key} takes a {kind.__name__}, got {value!r}") from None


def parse_settings(pairs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """KEY=VALUE flags -> milvus.yaml settings; a pair without '=' is refused with the expected form."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"bad Milvus setting {pair!r}: expected KEY=VALUE, e.g. dataCoord.segment.maxSize=2048")
        out[key.strip()] = value.strip()
    return out


def run_foreground(data_dir: str | None, port: int | None, settings: dict[str, str] | None = None) -> int:
    """`cbmir milvus-server`: start one, print its URI, serve until Ctrl-C, stop cleanly."""
    server = MilvusServer(data_dir=data_dir, port=port, settings=settings)
    stop_requested = False

    def _request_stop(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    previous = {s: signal.signal(s, _request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.start()
        print(f"Milvus {server.uri} (healthz {server.healthz_url}); data {server.data_dir}; Ctrl-C stops it",
              flush=True)
        while not stop_requested and server.running():
            time.sleep(0.2)
        code = 0 if stop_requested else 1
        if not stop_requested:
            print(f"Milvus exited by itself; its log ends with:\n{server.log_tail()}", flush=True)
        return code
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def add_milvus_server_parser(sub) -> None:  # noqa: ANN001 - argparse's private subparsers type
    parser = sub.add_parser(
        "milvus-server", help="run a real Milvus 2.3 standalone for this machine in the foreground (Ctrl-C stops it)",
        description="Start the Milvus standalone of the PyPI package `milvus` (free ports unless --port), wait until "
                    "it serves, print its URI for --milvus-uri, and run until Ctrl-C, then stop it and its whole "
                    "process group. Its components advertise 127.0.0.1 and its embedded etcd listens on 127.0.0.1 "
                    "only, but Milvus 2.3 has no listen-address setting (milvus-io/milvus#26538): its gRPC, "
                    "metrics and healthz ports listen on every interface. On a shared network, firewall them or "
                    "run it in a pod (docs/reliability.md).")
    parser.add_argument("--data", default=None, metavar="DIR",
                        help="data directory kept after exit (default: a temporary one, removed at exit)")
    parser.add_argument("--port", type=int, default=None, help="client port (default: a free one; 19530 is usual)")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default %(default)s)")
    parser.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="a milvus.yaml setting, dotted; repeatable (e.g. dataCoord.segment.maxSize=2048: "
                             "fewer, larger segments for collections of millions)")
    parser.set_defaults(func=lambda args: run_foreground(args.data, args.port, parse_settings(args.settings)))
