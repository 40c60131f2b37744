"""TLS, mutual TLS, bearer tokens and the audit log, on the real gRPC server with the real engine and store."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import grpc
import pytest
from pki import Pki

from cbmir.services.query.audit import filter_value_digest
from cbmir.services.query.auth import AuthConfigError, Authenticator, load_tokens, parse_tokens
from cbmir.services.query.client import RetrievalClient
from cbmir.services.query.server import ServerOptions, start_server
from cbmir.services.query.tls import ServerTls, TlsConfigError, check_plaintext_allowed

TOKEN = "s3cr3t-token-for-the-ward-viewer-0123456789"
OTHER_TOKEN = "another-valid-token-for-the-research-desk"


@pytest.fixture(scope="module")
def tokens_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tokens") / "tokens"
    path.write_text(f"# who:token\nward-viewer:{TOKEN}\n\n{OTHER_TOKEN}\n")
    return path


@pytest.fixture(scope="module")
def secure_server(corpus, pki: Pki, tokens_file: Path, tmp_path_factory: pytest.TempPathFactory):
    """TLS + token auth + audit log on 127.0.0.1."""
    audit = tmp_path_factory.mktemp("audit") / "audit.jsonl"
    options = ServerOptions(tls=ServerTls(str(pki.server_cert), str(pki.server_key)),
                            authenticator=Authenticator(load_tokens(tokens_file, env={})), audit_log=str(audit))
    running = start_server(corpus.engine(), host="127.0.0.1", port=0, options=options)
    yield running, audit
    running.stop()


@pytest.fixture(scope="module")
def mtls_server(corpus, pki: Pki):
    options = ServerOptions(tls=ServerTls(str(pki.server_cert), str(pki.server_key), client_ca=str(pki.ca)),
                            audit_log=None)
    running = start_server(corpus.engine(), host="127.0.0.1", port=0, options=options)
    yield running
    running.stop()


def _client(port: int, pki: Pki | None = None, **kwargs) -> RetrievalClient:
    if pki is not None:
        kwargs.setdefault("tls_ca", str(pki.ca))
    return RetrievalClient(f"127.0.0.1:{port}", timeout=20, **kwargs)


def test_tls_with_a_valid_token_serves_and_names_the_caller_in_the_audit_log(secure_server, pki, corpus) -> None:
    running, audit = secure_server
    with _client(running.port, pki, token=TOKEN) as client:
        reply = client.search(id=corpus.ids[0], top_k=3, filters={"dataset": "breastmnist"})
    assert reply.hits[0].id == corpus.ids[0]
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    mine = [r for r in records if r.get("query_id") == corpus.ids[0]][-1]
    assert mine["caller"] == "ward-viewer" and mine["auth"] == "token" and mine["status"] == "OK"
    assert mine["kind"] == "id" and mine["k"] == 3
    # Filter values are hashed (a client may filter by anything, a patient's name included), keys kept.
    assert mine["filters"] == {"dataset": filter_value_digest("breastmnist")} != {"dataset": "breastmnist"}
    assert "breastmnist" not in audit.read_text()
    assert mine["prefilter"] == "off" and mine["result_ids"] == [h.id for h in reply.hits]
    assert mine["latency_ms"] > 0 and mine["ts"].endswith("Z") and mine["peer"].startswith("ipv4:127.0.0.1")


@pytest.mark.parametrize("token", [None, "wrong-token-of-the-same-kind-0000000", TOKEN[:-1], TOKEN + "x", ""])
def test_missing_or_wrong_token_is_unauthenticated(secure_server, pki, corpus, token) -> None:
    running, _ = secure_server
    with _client(running.port, pki, token=token) as client, pytest.raises(grpc.RpcError) as raised:
        client.search(id=corpus.ids[0], top_k=3)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert TOKEN not in (raised.value.details() or "")


def test_a_bare_token_line_gets_a_line_name(secure_server, pki, corpus) -> None:
    running, audit = secure_server
    with _client(running.port, pki, token=OTHER_TOKEN) as client:
        client.describe()
    last = json.loads(audit.read_text().splitlines()[-1])
    assert last["caller"] == "token4" and last["method"] == "DescribeCollection"


def test_health_answers_without_a_token_and_reflection_does_not(secure_server, pki) -> None:
    running, _ = secure_server
    with _client(running.port, pki) as client:
        assert client.health() == "SERVING"
        from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

        with pytest.raises(grpc.RpcError) as raised:
            ProtoReflectionDescriptorDatabase(client.channel).get_services()
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_plain_text_client_cannot_talk_to_the_tls_server(secure_server, corpus) -> None:
    running, _ = secure_server
    with RetrievalClient(f"127.0.0.1:{running.port}", timeout=5, token=TOKEN) as client, \
            pytest.raises(grpc.RpcError) as raised:
        client.search(id=corpus.ids[0], top_k=1)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_client_that_does_not_trust_the_server_ca_refuses_it(secure_server, pki, corpus) -> None:
    running, _ = secure_server
    with _client(running.port, tls_ca=str(pki.rogue_ca), token=TOKEN) as client, \
            pytest.raises(grpc.RpcError) as raised:
        client.search(id=corpus.ids[0], top_k=1)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


def test_tokens_never_reach_the_log_or_the_audit_file(secure_server, pki, corpus, caplog) -> None:
    running, audit = secure_server
    caplog.set_level(logging.DEBUG)
    with _client(running.port, pki, token=TOKEN) as good, _client(running.port, pki, token="x" * 40) as bad:
        good.search(id=corpus.ids[1], top_k=2)
        with pytest.raises(grpc.RpcError):
            bad.search(id=corpus.ids[1], top_k=2)
    logged = caplog.text + audit.read_text()
    assert TOKEN not in logged and "x" * 40 not in logged and OTHER_TOKEN not in logged


def test_audit_records_hold_no_pixels(secure_server, pki, corpus) -> None:
    from PIL import Image

    running, audit = secure_server
    import io

    buffer = io.BytesIO()
    Image.fromarray(corpus.images[2]).save(buffer, format="PNG")
    with _client(running.port, pki, token=TOKEN) as client:
        client.search(image=buffer.getvalue(), top_k=2)
    record = json.loads(audit.read_text().splitlines()[-1])
    assert record["kind"] == "image" and record["image_bytes"] == len(buffer.getvalue())
    assert set(record) <= {"ts", "caller", "auth", "peer", "method", "kind", "collection", "k", "filters",
                           "prefilter", "prefilter_class", "rerank", "query_id", "image_bytes", "vector_dim",
                           "result_ids", "status", "latency_ms"}
    assert len(audit.read_text().splitlines()[-1]) < 2000
    assert oct(os.stat(audit).st_mode & 0o777) == "0o600"


def test_mutual_tls_admits_a_client_certificate_of_the_ca(mtls_server, pki, corpus) -> None:
    with _client(mtls_server.port, pki, tls_cert=str(pki.client_cert), tls_key=str(pki.client_key)) as client:
        assert client.search(id=corpus.ids[0], top_k=1).hits[0].id == corpus.ids[0]


@pytest.mark.parametrize("which", ["none", "rogue"])
def test_mutual_tls_refuses_clients_without_a_trusted_certificate(mtls_server, pki, corpus, which) -> None:
    kwargs = {} if which == "none" else {"tls_cert": str(pki.rogue_client_cert),
                                         "tls_key": str(pki.rogue_client_key)}
    with RetrievalClient(f"127.0.0.1:{mtls_server.port}", timeout=5, tls_ca=str(pki.ca), **kwargs) as client, \
            pytest.raises(grpc.RpcError) as raised:
        client.search(id=corpus.ids[0], top_k=1)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_subject_is_the_audit_identity(corpus, pki, tmp_path) -> None:
    audit = tmp_path / "audit.jsonl"
    options = ServerOptions(tls=ServerTls(str(pki.server_cert), str(pki.server_key), client_ca=str(pki.ca)),
                            audit_log=str(audit), store_check_seconds=0)
    running = start_server(corpus.engine(), host="127.0.0.1", port=0, options=options)
    try:
        with _client(running.port, pki, tls_cert=str(pki.client_cert), tls_key=str(pki.client_key)) as client:
            client.search(id=corpus.ids[0], top_k=1)
    finally:
        running.stop()
    record = json.loads(audit.read_text().splitlines()[-1])
    assert (record["caller"], record["auth"]) == ("radiology-ws-1", "mtls")


def test_plain_text_is_refused_beyond_loopback_unless_asked_for() -> None:
    check_plaintext_allowed("127.0.0.1", None, authenticated=False, insecure=False)
    check_plaintext_allowed("::1", None, authenticated=False, insecure=False)
    check_plaintext_allowed("localhost", None, authenticated=False, insecure=False)
    with pytest.raises(TlsConfigError, match="--tls-cert"):
        check_plaintext_allowed("0.0.0.0", None, authenticated=True, insecure=False)
    with pytest.raises(TlsConfigError, match="--auth-tokens-file"):
        check_plaintext_allowed("10.1.2.3", ServerTls("c", "k"), authenticated=False, insecure=False)
    check_plaintext_allowed("10.1.2.3", ServerTls("c", "k"), authenticated=True, insecure=False)
    check_plaintext_allowed("10.1.2.3", ServerTls("c", "k", client_ca="ca"), authenticated=False, insecure=False)
    check_plaintext_allowed("0.0.0.0", None, authenticated=False, insecure=True)


def test_serve_refuses_to_start_plain_text_on_all_interfaces(corpus) -> None:
    with pytest.raises(TlsConfigError, match="--insecure"):
        start_server(corpus.engine(), host="0.0.0.0", port=0)


def test_token_files_and_env_are_parsed_and_weak_tokens_refused(tmp_path) -> None:
    tokens = parse_tokens(["a:" + "1" * 16, "", "# comment", "2" * 20], "t")
    assert sorted(tokens.values()) == ["a", "token4"]
    with pytest.raises(AuthConfigError, match="shorter than 16") as raised:
        parse_tokens(["tiny-tok"], "t")
    assert "tiny-tok" not in str(raised.value)
    assert sorted(load_tokens(None, env={"CBMIR_AUTH_TOKENS": f"x:{'3' * 16},{'4' * 16}"}).values()) == ["token2", "x"]
    with pytest.raises(AuthConfigError, match="not found"):
        load_tokens(tmp_path / "missing", env={})


def test_refused_calls_are_audited_with_peer_method_and_reason(secure_server, pki, corpus, caplog) -> None:
    running, audit = secure_server
    caplog.set_level(logging.WARNING)
    before = len(audit.read_text().splitlines())
    for token in (None, "wrong-token-of-the-same-kind-0000000", None):
        with _client(running.port, pki, token=token) as client, pytest.raises(grpc.RpcError):
            client.search(id=corpus.ids[0], top_k=3)
    with _client(running.port, pki, token=TOKEN) as client, pytest.raises(grpc.RpcError) as raised:
        client.channel.unary_unary("/cbmir.v1.RetrievalService/Search", request_serializer=lambda b: b,
                                   response_deserializer=lambda b: b)(b"\xff" * 8, timeout=20,
                                                                      metadata=client.metadata)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    records = [json.loads(line) for line in audit.read_text().splitlines()[before:]]
    refused = [(r["status"], r["reason"]) for r in records]
    assert refused == [("UNAUTHENTICATED", "missing token"), ("UNAUTHENTICATED", "invalid token"),
                       ("UNAUTHENTICATED", "missing token"), ("INVALID_ARGUMENT", "malformed request")]
    assert all(r["method"] == "Search" and r["peer"].startswith("ipv4:127.0.0.1") for r in records)
    logged = [r for r in caplog.records if r.getMessage() == "unauthenticated call refused"]
    assert len(logged) >= 3 and all(getattr(r, "peer", "").startswith("ipv4:127.0.0.1") for r in logged)


def test_the_audit_log_rotates_by_size_and_keeps_its_backups(tmp_path: Path) -> None:
    from cbmir.services.query.audit import AuditLog
    from cbmir.services.query.auth import Caller

    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path, max_bytes=4096, backups=2)
    for i in range(200):  # ~150 bytes a record: ~30 KB in all, far over 3 files of 4 KiB
        audit.record(Caller("ward-viewer", "ipv4:127.0.0.1:1", "token"), "Search", "OK", 1.0,
                     {"kind": "id", "query_id": f"{i:032d}", "filters": {"label": "x" * 40}})
    audit.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    assert all(p.stat().st_size <= 4096 for p in tmp_path.iterdir())
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in tmp_path.iterdir())
    last = json.loads(path.read_text().splitlines()[-1])
    assert last["query_id"] == f"{199:032d}"  # the newest record is in the live file
