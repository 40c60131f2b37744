"""`cbmir bench fuzz`: every class of bad input against a real `cbmir serve` process; statuses, leaks, RSS.

Builds a small real collection (BreastMNIST images, the real model, Milvus Lite) in a child process, starts
`cbmir serve` on 127.0.0.1 in another, sends `requests` generated requests (bench/fuzz_inputs.py) from `clients`
threads, each on its own channel, as raw bytes with identity serializers, and records per class: the count, the
status histogram, INTERNAL/UNKNOWN replies, replies whose details carry a path or a traceback, the slowest call;
and for the server: alive (health SERVING) at the end, resting and peak RSS, server log lines, audit log growth.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cbmir.bench.fuzz_inputs import Classes
from cbmir.bench.serve_process import start_serve, stop_serve

COLLECTION = "fuzz"
CRASH_STATUSES = ("INTERNAL", "UNKNOWN")
HANG_STATUSES = ("DEADLINE_EXCEEDED",)
# A path in a reply: '/' then a word, not preceded by a word character (so "a/b" ratios and "N/A" do not count).
PATH = re.compile(r"(?<![\w])/[A-Za-z_][\w.-]+")


@dataclass
class FuzzConfig:
    requests: int = 10_000
    clients: int = 8
    seed: int = 0
    rows: int = 40  # collection size: the point is the service, not the search
    deadline_s: float = 30.0  # a call slower than this is a hang
    audit_log: bool = False
    bombs: bool = True
    workers: int = 8  # cbmir serve --workers
    max_message_mb: int = 64  # cbmir serve's default; the oversized class sends just over it
    workdir: str = ""
    classes: tuple[str, ...] = ()  # only these classes (default: all)
    decode_budget_mb: int = 1024  # cbmir serve's default --decode-memory-budget-mb: the RSS bound's main term


def build_collection(uri: str, rows: int, collection: str = COLLECTION) -> None:
    """Embed `rows` real BreastMNIST images with the real model and upsert them (run in a child process: Milvus
    Lite holds its file for one process)."""
    from cbmir.ingestion.samples import BREASTMNIST_SUBSET
    from cbmir.services.embedding import EmbeddingModel, decode_array, image_id
    from cbmir.services.store import MilvusStore, choose_index

    model = EmbeddingModel.load("efficientnet_lite0")
    data = np.load(BREASTMNIST_SUBSET)
    decoded = [decode_array(data["train_images"][i]) for i in range(rows)]
    labels = [["malignant", "normal_benign"][int(data["train_labels"][i].reshape(-1)[0])] for i in range(rows)]
    vectors = model.embed([d.pixels for d in decoded])
    store = MilvusStore(uri)
    store.ensure_collection(collection, model.identity.to_json(), model.dim, choose_index("HNSW", "COSINE"))
    empty = dict.fromkeys(("predicted_label", "modality", "body_part", "view", "model_id"), "")
    store.upsert(collection, [{**empty, "id": image_id(d.content_key), "embedding": v.tolist(), "label": label,
                               "source": f"train/{n}.png", "dataset": "breastmnist"}
                              for n, (d, v, label) in enumerate(zip(decoded, vectors, labels, strict=True))])
    store.flush(collection)
    store.close()


def _valid_images(count: int = 8) -> list[bytes]:
    from PIL import Image

    from cbmir.ingestion.samples import BREASTMNIST_SUBSET

    out = []
    for pixels in np.load(BREASTMNIST_SUBSET)["test_images"][:count]:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def _proc_kib(pid: int, field: str) -> int:
    """VmRSS / VmHWM of a process from /proc, in KiB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssSampler(threading.Thread):
    """Peak VmRSS of a process, sampled every `interval` seconds (VmHWM also counts the start-up peak)."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak_kib = pid, interval, 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.peak_kib = max(self.peak_kib, _proc_kib(self.pid, "VmRSS"))
            self.stopped.wait(self.interval)


@dataclass
class Served:
    process: subprocess.Popen
    target: str
    log_path: Path
    audit_path: Path | None


def serve(work: Path, config: FuzzConfig, env: dict[str, str]) -> Served:
    """`cbmir serve` on the collection, in its own process on 127.0.0.1; returns once health says SERVING."""
    audit = work / "audit.jsonl" if config.audit_log else None
    args = ["--milvus-uri", str(work / "cbmir.db"), "--collection", COLLECTION, "--metrics-port", "0", "--log-level",
            "WARNING", "--workers", str(config.workers), "--max-message-mb", str(config.max_message_mb),
            "--decode-memory-budget-mb", str(config.decode_budget_mb)]
    if audit:
        args += ["--audit-log", str(audit)]
    started = start_serve(args, work / "serve.log", env=env)
    return Served(started.process, started.target, started.log_path, audit)


def stop(served: Served) -> None:
    stop_serve(served)  # type: ignore[arg-type]


def _schedule(classes: Classes, total: int, seed: int) -> list[str]:
    """`total` class names in a seeded random order, each class's share from its weight (never zero)."""
    names = list(classes.generators)
    weights = np.array([Classes.WEIGHTS[n] for n in names], dtype=float)
    counts = np.maximum(1, np.floor(total * weights / weights.sum())).astype(int)
    counts[int(np.argmax(weights))] += max(0, total - int(counts.sum()))
    order = [n for n, c in zip(names, counts, strict=True) for _ in range(c)]
    np.random.default_rng(seed).shuffle(order)
    return order


def leaks(details: str, wire: bytes, secrets: tuple[str, ...]) -> tuple[bool, bool]:
    """(a path the client did not send itself, or a server directory; a traceback) in a reply's details."""
    sent = wire.decode("latin-1")
    path = any(s in details for s in secrets if s) or any(m.group() not in sent for m in PATH.finditer(details))
    return path, "Traceback" in details


def run_fuzz(config: FuzzConfig, progress: Callable[[str], None] = print) -> dict[str, Any]:
    import grpc

    from cbmir.services.query.client import RetrievalClient

    work = Path(config.workdir or tempfile.mkdtemp(prefix="cbmir-fuzz-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"from cbmir.bench.fuzz import build_collection; "
                    f"build_collection({str(work / 'cbmir.db')!r}, {config.rows})"],
                   check=True, env=env, timeout=900, capture_output=True)
    progress(f"collection of {config.rows} rows built in {time.perf_counter() - started:.1f} s")
    valid = _valid_images()
    classes = Classes(COLLECTION, valid, config.max_message_mb, bombs=config.bombs,
                      opt_in=tuple(c for c in config.classes if c in Classes.OPT_IN))
    if config.classes:
        unknown = set(config.classes) - set(classes.generators)
        if unknown:
            raise ValueError(f"unknown fuzz class(es) {sorted(unknown)}: use some of {sorted(classes.generators)}")
        classes.generators = {k: v for k, v in classes.generators.items() if k in config.classes}
    order = _schedule(classes, config.requests, config.seed)
    served = serve(work, config, env)
    pid = served.process.pid
    secrets = (str(work), str(Path.home()), os.getcwd(), sys.prefix)
    per_class: dict[str, dict[str, Any]] = {}
    examples: list[dict[str, Any]] = []
    lock = threading.Lock()
    local = threading.local()
    channels: list[Any] = []
    channel_options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", 64 << 20)]

    def channel() -> Any:
        if not hasattr(local, "channel"):
            local.channel = grpc.insecure_channel(served.target, options=channel_options)
            with lock:
                channels.append(local.channel)
        return local.channel

    def one(index: int) -> None:
        name = order[index]
        method, wire = classes.generators[name](np.random.default_rng([config.seed, index]))
        call = channel().unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        t0 = time.perf_counter()
        try:
            call(wire, timeout=config.deadline_s)
            code, details = "OK", ""
        except grpc.RpcError as error:
            code, details = error.code().name, error.details() or ""
        elapsed = time.perf_counter() - t0
        path, traceback = leaks(details, wire, secrets)
        with lock:
            row = per_class.setdefault(name, {"requests": 0, "statuses": {}, "internal_or_unknown": 0, "hangs": 0,
                                              "path_in_reply": 0, "traceback_in_reply": 0, "slowest_s": 0.0,
                                              "bytes_sent": 0})
            row["requests"] += 1
            row["bytes_sent"] += len(wire)
            row["statuses"][code] = row["statuses"].get(code, 0) + 1
            row["internal_or_unknown"] += code in CRASH_STATUSES
            row["hangs"] += code in HANG_STATUSES
            row["path_in_reply"] += path
            row["traceback_in_reply"] += traceback
            row["slowest_s"] = max(row["slowest_s"], round(elapsed, 3))
            if (code in CRASH_STATUSES + HANG_STATUSES or path or traceback) and len(examples) < 20:
                examples.append({"class": name, "method": method, "status": code, "details": details[:300],
                                 "request_head": wire[:120].hex()})

    try:
        with RetrievalClient(served.target, timeout=60) as client:  # warm the model, then measure resting RSS
            for image in valid:
                client.search(image=image, top_k=5)
        time.sleep(1.0)
        resting_kib = _proc_kib(pid, "VmRSS")
        log_before = served.log_path.stat().st_size
        audit_before = served.audit_path.stat().st_size if served.audit_path and served.audit_path.exists() else 0
        sampler = RssSampler(pid)
        sampler.start()
        progress(f"cbmir serve pid {pid} resting RSS {resting_kib / 1024:.0f} MiB; sending {len(order)} requests "
                 f"from {config.clients} clients")
        t0 = time.perf_counter()
        done = 0
        with ThreadPoolExecutor(config.clients) as pool:
            for _ in pool.map(one, range(len(order))):
                done += 1
                if done % 1000 == 0:
                    progress(f"  {done}/{len(order)} in {time.perf_counter() - t0:.0f} s, "
                             f"RSS {_proc_kib(pid, 'VmRSS') / 1024:.0f} MiB")
        wall_s = time.perf_counter() - t0
        sampler.stopped.set()
        sampler.join()
        alive = served.process.poll() is None
        try:
            with RetrievalClient(served.target, timeout=10) as client:
                health = client.health()
                after = len(client.search(image=valid[0], top_k=5).hits)
        except grpc.RpcError as error:
            health, after = f"error: {error.code().name}", 0
        end_kib, hwm_kib = _proc_kib(pid, "VmRSS"), _proc_kib(pid, "VmHWM")
    finally:
        for ch in channels:
            ch.close()
        stop(served)
    log_all = served.log_path.read_text(errors="replace")
    with open(served.log_path, "rb") as handle:
        handle.seek(log_before)
        log_text = handle.read().decode(errors="replace")  # what the fuzz made the server log
    audit = None
    if served.audit_path and served.audit_path.exists():
        lines = served.audit_path.read_text(errors="replace").splitlines()
        size = served.audit_path.stat().st_size
        audit = {"bytes": size, "lines": len(lines), "bytes_per_request": round((size - audit_before) / len(order), 1),
                 "longest_line_chars": max((len(x) for x in lines), default=0)}
    totals = {k: sum(r[k] for r in per_class.values())
              for k in ("requests", "internal_or_unknown", "hangs", "path_in_reply", "traceback_in_reply")}
    statuses: dict[str, int] = {}
    for row in per_class.values():
        for code, n in row["statuses"].items():
            statuses[code] = statuses.get(code, 0) + n
    return {
        "config": {k: v for k, v in asdict(config).items() if k != "workdir"},
        "classes": dict(sorted(per_class.items())), "totals": {**totals, "statuses": statuses},
        "wall_s": round(wall_s, 1), "requests_per_s": round(len(order) / wall_s, 1),
        "server": {"alive": alive, "health_after": health, "hits_after": after,
                   "rss_resting_mib": round(resting_kib / 1024, 1), "rss_peak_mib": round(sampler.peak_kib / 1024, 1),
                   "rss_end_mib": round(end_kib / 1024, 1), "vm_hwm_mib": round(hwm_kib / 1024, 1),
                   "rss_source": "/proc/PID/status VmRSS sampled every 50 ms; VmHWM includes start-up",
                   "rss_bound_mib": round(resting_kib / 1024 + config.decode_budget_mb + 256, 1),
                   "log_lines": len(log_text.splitlines()), "log_tracebacks": log_text.count("Traceback"),
                   "log_lines_with_start_up": len(log_all.splitlines()),
                   "log_tracebacks_with_start_up": log_all.count("Traceback")},
        "audit": audit, "examples": examples,
    }


def fuzz_table(record: dict[str, Any]) -> str:
    codes = sorted(record["totals"]["statuses"], key=lambda c: -record["totals"]["statuses"][c])
    short = {"INVALID_ARGUMENT": "INVALID", "RESOURCE_EXHAUSTED": "RES_EXH", "FAILED_PRECONDITION": "PRECOND",
             "DEADLINE_EXCEEDED": "DEADLINE"}
    header = (f"{'class':24s} {'n':>6s} " + " ".join(f"{short.get(c, c):>9s}" for c in codes)
              + f" {'INT/UNK':>7s} {'paths':>5s} {'traceb':>6s} {'max s':>6s}")
    lines = [header, "-" * len(header)]
    rows = [*record["classes"].items(), ("TOTAL", {**record["totals"], "slowest_s": max(
        r["slowest_s"] for r in record["classes"].values())})]
    for name, row in rows:
        counts = row["statuses"]
        lines.append(f"{name:24s} {row['requests']:>6d} " + " ".join(f"{counts.get(c, 0):>9d}" for c in codes)
                     + f" {row['internal_or_unknown']:>7d} {row['path_in_reply']:>5d} "
                       f"{row['traceback_in_reply']:>6d} {row['slowest_s']:>6.2f}")
    server = record["server"]
    lines.append(f"\nserver alive: {server['alive']} (health {server['health_after']}, {server['hits_after']} hits "
                 f"after); RSS resting {server['rss_resting_mib']} MiB, peak {server['rss_peak_mib']} MiB, end "
                 f"{server['rss_end_mib']} MiB (bound: resting + decode budget + 256 = {server['rss_bound_mib']} MiB); "
                 f"{server['log_lines']} server log lines, "
                 f"{server['log_tracebacks']} tracebacks; {record['requests_per_s']} requests/s over "
                 f"{record['wall_s']} s")
    if record["audit"]:
        audit = record["audit"]
        lines.append(f"audit log: {audit['lines']} lines, {audit['bytes_per_request']} bytes/request, longest line "
                     f"{audit['longest_line_chars']} chars")
    return "\n".join(lines)


def fuzz_plot(record: dict[str, Any], out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(record["classes"])
    codes = sorted(record["totals"]["statuses"], key=lambda c: -record["totals"]["statuses"][c])
    colours = {"OK": "tab:green", "INVALID_ARGUMENT": "tab:blue", "NOT_FOUND": "tab:cyan",
               "RESOURCE_EXHAUSTED": "tab:orange", "FAILED_PRECONDITION": "tab:purple", "INTERNAL": "tab:red",
               "UNKNOWN": "darkred", "DEADLINE_EXCEEDED": "black"}
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(names) + 1.6))
    left = np.zeros(len(names))
    for code in codes:
        counts = np.array([record["classes"][n]["statuses"].get(code, 0) for n in names], dtype=float)
        ax.barh(names, counts, left=left, color=colours.get(code, "grey"), label=code)
        left += counts
    totals = record["totals"]
    ax.set(xlabel="requests", title=f"cbmir bench fuzz: {totals['requests']} requests, "
                                    f"{totals['internal_or_unknown']} INTERNAL/UNKNOWN, "
                                    f"{totals['path_in_reply']} paths, {totals['traceback_in_reply']} tracebacks")
    ax.invert_yaxis()
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    path = out_dir / "fuzz.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
