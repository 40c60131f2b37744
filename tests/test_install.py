"""cbmir as a wheel: built from this checkout, installed into a fresh virtualenv, run with the source tree out of
sys.path (Ray workers included): `cbmir --help`, `cbmir ingest` of the shipped samples, `cbmir search` against
`cbmir serve`.

The fresh venv gets the wheel alone (`--no-deps`); its dependencies come from this checkout's .venv through a
folder of links to its packages, added by a .pth line: without the editable install's hook (the one that maps
this checkout into `cbmir`) and without the GPL libjpeg plugin, which only the dev and gpl-jpeg extras install,
so the venv decodes what a default install decodes.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
# What the dev .venv holds beyond a default install: the editable hook of this checkout, the GPL libjpeg plugin.
OUTSIDE_DEFAULT_INSTALL = ("__editable__", "cbmir", "libjpeg", "pylibjpeg_libjpeg")


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("install")
    wheels = root / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation",
                            "--no-cache-dir", "-w", str(wheels)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = wheels.glob("cbmir-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"cbmir"}, f"the wheel installs {sorted(top)}, not the one package cbmir"
    assert "cbmir/v1/retrieval_pb2_grpc.py" in names  # stubs are built into the wheel

    venv = root / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    deps = root / "deps"
    deps.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.startswith(OUTSIDE_DEFAULT_INSTALL) and entry.suffix != ".pth":
            (deps / entry.name).symlink_to(entry)
    (site / "cbmir-test-deps.pth").write_text(f"{deps}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", PYTHONSAFEPATH="1")
    # pip of this .venv, told to install into the fresh venv's interpreter paths.
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                                "--no-index", str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-3000:]
    where = _run([str(python), "-c", "import cbmir.services, cbmir.v1; print(cbmir.services.__file__)"], root, env)
    assert where.returncode == 0, where.stderr[-3000:]
    assert where.stdout.strip().startswith(str(site)), where.stdout
    return venv, env


def test_installed_wheel_explains_itself(installed: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    venv, env = installed
    result = _run([str(venv / "bin" / "cbmir"), "--help"], tmp_path, env)
    assert result.returncode == 0, result.stderr[-3000:]
    for command in ("ingest", "serve", "search", "train", "eval", "bench", "demo", "milvus-server"):
        assert command in result.stdout


def test_installed_wheel_ingests_serves_and_searches(installed: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    venv, env = installed
    cbmir = str(venv / "bin" / "cbmir")
    python = str(venv / "bin" / "python")
    samples = _run([python, "-c", "from cbmir.ingestion.samples import BREASTMNIST_SUBSET as s; print(s)"],
                   tmp_path, env)
    sample = Path(samples.stdout.strip())
    assert sample.is_file() and not sample.is_relative_to(REPO), samples.stderr[-2000:]
    db = str(tmp_path / "installed.db")
    ingest = _run([cbmir, "ingest", str(sample), "--milvus-uri", db, "--collection", "wheel", "--limit", "24",
                   "--actors", "1", "--batch-size", "8", "--no-progress", "--report", str(tmp_path / "r.json")],
                  tmp_path, env, timeout=600)
    assert ingest.returncode == 0, ingest.stderr[-3000:]
    assert "ingested 24" in ingest.stdout, ingest.stdout

    with np.load(sample) as data:
        key = next(k for k in data.files if k.endswith("_images"))
        Image.fromarray(np.asarray(data[key][0], dtype=np.uint8)).save(tmp_path / "query.png")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([cbmir, "serve", "--milvus-uri", db, "--collection", "wheel", "--port", str(port),
                               "--metrics-port", "0"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            search = _run([cbmir, "search", str(tmp_path / "query.png"), "-k", "3", "--target", f"127.0.0.1:{port}",
                           "--timeout", "10"], tmp_path, env)
            if search.returncode == 0 or server.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        assert search.returncode == 0, (search.stderr[-2000:], server.poll())
        hits = [line for line in search.stdout.splitlines() if line.strip()[:2] in ("1 ", "2 ", "3 ")]
        assert len(hits) == 3, search.stdout
    finally:
        server.terminate()
        server.wait(timeout=60)


def test_default_install_decodes_compressed_dicom_without_gpl_code(installed: tuple[Path, dict[str, str]],
                                                                   tmp_path: Path) -> None:
    # JPEG lossless and JPEG-LS through gdcm / pyjpegls; 12-bit JPEG Extended needs the opt-in GPL plugin and says so.
    venv, env = installed
    code = """
import importlib.util
from pathlib import Path
from pydicom.data import get_testdata_file
from cbmir.services.embedding import ImageDecodeError, decode_image
assert importlib.util.find_spec("libjpeg") is None
for name in ("JPGLosslessP14SV1_1s_1f_8b.dcm", "MR_small_jpeg_ls_lossless.dcm", "SC_rgb_jpeg_dcmtk.dcm",
             "MR_small_jp2klossless.dcm"):
    assert decode_image(Path(get_testdata_file(name)).read_bytes()).pixels.size > 0, name
try:
    decode_image(Path(get_testdata_file("JPGExtended.dcm")).read_bytes())
except ImageDecodeError as error:
    assert "cbmir[gpl-jpeg]" in str(error), error
    print("refused with the hint")
"""
    result = _run([str(venv / "bin" / "python"), "-c", code], tmp_path, env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "refused with the hint" in result.stdout
