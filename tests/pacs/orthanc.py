"""A real Orthanc PACS (Debian orthanc + orthanc-dicomweb) on 127.0.0.1 free ports for tests: start, upload, stop."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

ORTHANC = "Orthanc"
DICOMWEB_PACKAGE = "orthanc-dicomweb"
START_SECONDS = 30
AE_TITLE = "ORTHANC"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dicomweb_plugin() -> Path | None:
    """The DICOMweb plugin's .so as the Debian package installed it (`dpkg -L orthanc-dicomweb`), or None."""
    try:
        listed = subprocess.run(["dpkg", "-L", DICOMWEB_PACKAGE], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    libraries = [Path(line) for line in listed.stdout.splitlines() if ".so" in Path(line).name]
    # The plugins folder holds the unversioned name Orthanc's packaging points at; any listed .so loads.
    libraries.sort(key=lambda p: ("/plugins/" not in str(p), str(p)))
    return next((p for p in libraries if p.exists()), None)


def missing() -> str:
    """Why Orthanc cannot run here ("" when it can): the fix names the setup step."""
    if shutil.which(ORTHANC) is None:
        return "Orthanc is not installed (as root: apt-get install -y orthanc orthanc-dicomweb; scripts/setup.sh)"
    if dicomweb_plugin() is None:
        return "the Orthanc DICOMweb plugin is not installed (as root: apt-get install -y orthanc-dicomweb)"
    return ""


@dataclass
class Orthanc:
    """A running Orthanc: its REST/DICOMweb URLs, its DICOM port and AE title, and the credentials it wants."""

    http_port: int
    dicom_port: int
    user: str = ""
    password: str = ""
    ae_title: str = AE_TITLE

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def auth(self) -> tuple[str, str] | None:
        return (self.user, self.password) if self.user else None

    def upload(self, data: bytes) -> dict[str, str]:
        """POST /instances one DICOM file; Orthanc's answer (ID, ParentStudy, Status...)."""
        reply = requests.post(f"{self.url}/instances", data=data, auth=self.auth, timeout=30,
                              headers={"Content-Type": "application/dicom"})
        reply.raise_for_status()
        return reply.json()

    def file(self, orthanc_id: str) -> bytes:
        """The DICOM file of one stored instance (by Orthanc's id), as uploaded."""
        reply = requests.get(f"{self.url}/instances/{orthanc_id}/file", auth=self.auth, timeout=30)
        reply.raise_for_status()
        return reply.content

    def get(self, path: str) -> Any:
        reply = requests.get(f"{self.url}{path}", auth=self.auth, timeout=30)
        reply.raise_for_status()
        return reply.json()


@contextmanager
def running_orthanc(workdir: Path, *, user: str = "", password: str = "",
                    modalities: dict[str, tuple[str, str, int]] | None = None,
                    extra: dict[str, object] | None = None) -> Iterator[Orthanc]:
    """Orthanc with the DICOMweb plugin on 127.0.0.1 free ports, storing in `workdir`; stopped (SIGTERM) on exit.

    `modalities`: DicomModalities entries, name -> (AE title, host, port), so Orthanc can C-STORE to a peer
    (REST /modalities/{name}/store). With `user`, the REST and DICOMweb APIs want HTTP Basic credentials.
    """
    reason = missing()
    if reason:
        raise RuntimeError(reason)
    server = Orthanc(http_port=free_port(), dicom_port=free_port(), user=user, password=password)
    config = {
        "Name": "cbmir-test", "StorageDirectory": str(workdir / "storage"), "IndexDirectory": str(workdir / "index"),
        "HttpPort": server.http_port, "DicomPort": server.dicom_port, "DicomAet": server.ae_title,
        "RemoteAccessAllowed": False, "HttpBindAddress": "127.0.0.1", "DicomBindAddress": "127.0.0.1",
        "AuthenticationEnabled": bool(user), "RegisteredUsers": {user: password} if user else {},
        "Plugins": [str(dicomweb_plugin())], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "DicomModalities": {name: list(entry) for name, entry in (modalities or {}).items()},
        "StableAge": 1, "HttpTimeout": 30,
        **(extra or {}),
    }
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    log = open(workdir / "orthanc.log", "wb")  # noqa: SIM115 (closed below, after the process)
    process = subprocess.Popen([ORTHANC, str(path)], stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_ready(server, process, workdir / "orthanc.log")
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _wait_ready(server: Orthanc, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            if requests.get(f"{server.dicomweb}/studies", auth=server.auth, timeout=2).status_code in (200, 204):
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"Orthanc did not answer within {START_SECONDS} s: {log.read_text()[-2000:]}")
