"""The `cbmir` command as a user runs it: help, clear errors, and the demo end to end in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

CBMIR = [sys.executable, "-m", "cbmir.cli"]
REPO = Path(__file__).resolve().parents[1]


def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CBMIR, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)


@pytest.mark.parametrize("command", ["ingest", "serve", "search", "info", "demo"])
def test_every_subcommand_explains_itself(command: str) -> None:
    result = run(command, "--help")
    assert result.returncode == 0
    assert "--" in result.stdout and "usage: cbmir " + command in result.stdout


def test_ingest_of_a_missing_source_fails_with_one_clear_line(tmp_path: Path) -> None:
    result = run("ingest", str(tmp_path / "nowhere"), "--milvus-uri", str(tmp_path / "x.db"))
    assert result.returncode == 2
    assert "nowhere" in result.stderr and "Traceback" not in result.stderr


def test_serve_refuses_a_backbone_without_weights(tmp_path: Path) -> None:
    result = run("serve", "--backbone", "densenet121", "--milvus-uri", str(tmp_path / "x.db"), "--port", "0")
    assert result.returncode == 2
    assert "--weights" in result.stderr and "Traceback" not in result.stderr


def test_search_against_no_server_says_unavailable(tmp_path: Path) -> None:
    image = tmp_path / "q.png"
    image.write_bytes(b"not really")
    result = run("search", str(image), "--target", "127.0.0.1:1", "--timeout", "3")
    assert result.returncode == 2
    assert "UNAVAILABLE" in result.stderr


def test_demo_ingests_serves_queries_and_stops(tmp_path: Path) -> None:
    result = run("demo", "--workdir", str(tmp_path / "demo"), "--limit", "40", "-k", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SERVING" in result.stdout and "stopped cleanly" in result.stdout
    assert "model warmed up in" in result.stdout and "first query: round trip" in result.stdout
    hit_lines = [line for line in result.stdout.splitlines() if line.strip().startswith(("1 ", "2 ", "3 "))]
    assert len(hit_lines) == 3
    report = json.loads((tmp_path / "demo" / "ingest-report.json").read_text())
    assert report["ingested"] > 0 and report["failed"] == len(report["failures"])


def test_search_loads_neither_torch_nor_pymilvus(tmp_path: Path) -> None:
    # The client side of the house: a query is bytes over gRPC, so `cbmir search` starts without the model or store.
    image = tmp_path / "q.png"
    image.write_bytes(b"not really")
    code = ("import sys; from cbmir.cli import main\n"
            "try:\n    main(['search', sys.argv[1], '--target', '127.0.0.1:1', '--timeout', '1'])\n"
            "except SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'pymilvus', 'ray', 'faiss') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code, str(image)], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout + result.stderr[-2000:]


def test_secrets_come_from_files_or_env_not_only_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cbmir.cli import build_parser

    salt, token = tmp_path / "salt", tmp_path / "token"
    salt.write_text("per-deployment-salt-7c1d\n")
    token.write_text("root:Milvus\n")
    args = build_parser().parse_args(["ingest", "archive", "--id-salt-file", str(salt), "--milvus-token-file",
                                      str(token)])
    assert (args.id_salt, args.milvus_token) == ("per-deployment-salt-7c1d", "root:Milvus")
    monkeypatch.setenv("CBMIR_ID_SALT", "from-the-environment")
    assert build_parser().parse_args(["serve"]).id_salt == "from-the-environment"
    empty = tmp_path / "empty"
    empty.write_text("")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--id-salt-file", str(empty)])


def test_search_of_a_directory_is_one_clear_line_and_exit_2(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from cbmir.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["search", str(tmp_path), "--target", "127.0.0.1:1", "--timeout", "1"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"cbmir: error: {tmp_path} is a directory: a search takes one image file (to index a folder, "
                   "use `cbmir ingest --source DIR`)")


@pytest.mark.parametrize(("rerank", "shown"), [("hog", "re-ranked by HOG"),
                                               ("kreciprocal", "re-ranked by k-reciprocal neighbourhoods")])
def test_search_output_names_the_re_ranking_that_ran(rerank: str, shown: str) -> None:
    import io

    from cbmir.services.commands import print_hits
    from cbmir.services.query.proto import retrieval_pb2

    out = io.StringIO()
    print_hits(retrieval_pb2.SearchResponse(reranked=True, collection="c"), out, rerank=rerank)
    assert shown in out.getvalue()
