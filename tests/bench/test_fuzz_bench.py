"""`cbmir bench fuzz`, small: every class of bad input against a real `cbmir serve` process, no crash, no leak."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cbmir.bench.fuzz import PATH, leaks


@pytest.fixture(scope="module")
def fuzz_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("fuzz")
    finished = subprocess.run([sys.executable, "-m", "cbmir.cli", "bench", "fuzz", "--requests", "300",
                               "--clients", "2", "--audit-log", "--out", str(out)],
                              capture_output=True, text=True, timeout=900)
    records = list(out.glob("*/fuzz.json"))
    assert records, finished.stdout[-3000:] + finished.stderr[-3000:]
    assert (records[0].parent / "fuzz.png").stat().st_size > 0
    return json.loads(records[0].read_text()), finished.stdout + f"\nexit {finished.returncode}"


def test_every_class_runs_and_the_record_has_its_shape(fuzz_run) -> None:
    record, stdout = fuzz_run
    assert record["totals"]["requests"] == 300
    assert set(record["classes"]) >= {"protobuf_random", "image_random", "png_mutated", "jpeg_mutated",
                                      "dicom_mutated", "dicom_header", "bombs", "vectors", "top_k", "filters",
                                      "huge_strings", "enums", "unknown_fields", "oversized", "valid_image"}
    for row in record["classes"].values():
        assert row["requests"] == sum(row["statuses"].values()) > 0
    assert record["classes"]["valid_image"]["statuses"] == {"OK": record["classes"]["valid_image"]["requests"]}
    server = record["server"]
    assert server["rss_peak_mib"] >= server["rss_resting_mib"] > 0
    assert record["audit"]["lines"] > 0 and record["audit"]["bytes_per_request"] > 0
    assert "TOTAL" in stdout and "exit 0" in stdout


def test_no_crash_no_hang_no_leak_and_the_server_survives(fuzz_run) -> None:
    record, _ = fuzz_run
    totals = record["totals"]
    assert totals["internal_or_unknown"] == 0, record["examples"]
    assert totals["hangs"] == 0, record["examples"]
    assert totals["path_in_reply"] == 0 and totals["traceback_in_reply"] == 0, record["examples"]
    assert record["server"]["alive"] and record["server"]["health_after"] == "SERVING"
    assert record["server"]["hits_after"] == 5
    assert record["server"]["log_tracebacks"] == 0
    assert record["audit"]["longest_line_chars"] < 8192  # 10^5-character values are never written verbatim


def test_the_leak_check_flags_a_server_path_but_not_what_the_client_sent() -> None:
    data_dir = str(Path("/srv/cbmir/data"))
    assert leaks(f"collection 'x' not found at {data_dir}/cbmir.db", b"x", ()) == (True, False)
    assert leaks("id '../../../../etc/passwd' not found", b"../../../../etc/passwd", ()) == (False, False)
    assert leaks("k must be 1..1000, got 0", b"", ()) == (False, False)
    assert leaks("oops in work dir", b"", ("work dir",)) == (True, False)
    assert leaks("Traceback (most recent call last):", b"", ()) == (False, True)
    assert PATH.search("a/b") is None
