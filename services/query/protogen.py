"""Generate the Python gRPC stubs of proto/cbmir/v1/*.proto into the top-level `cbmir` package (never committed)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "proto"
OUTPUT_ROOT = REPO_ROOT


def generate(output_root: Path = OUTPUT_ROOT) -> list[Path]:
    """Run protoc (from grpcio-tools) on every .proto under proto/; return the generated files."""
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    if not protos:
        raise FileNotFoundError(f"no .proto files under {PROTO_ROOT}")
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={output_root}",
        f"--pyi_out={output_root}",
        f"--grpc_python_out={output_root}",
        *[str(p) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    # protoc writes modules, not packages: add the __init__.py files Python needs.
    generated: list[Path] = []
    for proto in protos:
        package_dir = output_root / proto.parent.relative_to(PROTO_ROOT)
        for parent in [package_dir, *package_dir.relative_to(output_root).parents]:
            init = output_root / parent / "__init__.py"
            if parent != Path(".") and not init.exists():
                init.write_text('"""Generated from proto/ by services.query.protogen; do not edit."""\n')
        generated.extend(package_dir.glob(f"{proto.stem}_pb2*.py"))
    return generated


if __name__ == "__main__":
    for path in generate():
        print(f"generated {path.relative_to(REPO_ROOT)}", file=sys.stderr)
