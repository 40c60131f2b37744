#!/usr/bin/env python3
"""gRPC health check over TLS, for container probes: exit 0 when grpc.health.v1 says SERVING, else 1.

The kubelet's native `grpc:` probe and Docker have no TLS client, and `cbmir serve` on a pod address speaks TLS only,
so probes exec this instead (it is installed in the image as /usr/local/bin/cbmir-health). Health needs no token.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", default="127.0.0.1:50051", help="host:port of the gRPC service")
    parser.add_argument("--service", default="", help='service name to check ("" = the whole server)')
    parser.add_argument("--tls-ca", default=None, help="CA (or the self-signed certificate) to verify the server")
    parser.add_argument("--tls-server-name", default=None, help="name the certificate is issued for")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    options = [("grpc.ssl_target_name_override", args.tls_server_name)] if args.tls_server_name else []
    if args.tls_ca:
        with open(args.tls_ca, "rb") as handle:
            credentials = grpc.ssl_channel_credentials(root_certificates=handle.read())
        channel = grpc.secure_channel(args.target, credentials, options=options)
    else:
        channel = grpc.insecure_channel(args.target)
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=args.service),
                                                          timeout=args.timeout)
    except grpc.RpcError as error:
        print(f"unhealthy: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    finally:
        channel.close()
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    raise SystemExit(main())
