"""Build step of the cbmir distribution: generate the gRPC stubs of proto/ into the `cbmir.v1` package.

Everything else is declared in pyproject.toml. The stubs are built, never committed, never generated at import
time: a wheel carries them, and an editable install gets them in place (cbmir/v1/, ignored by git).
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROTO_ROOT = ROOT / "proto"
STUBS_NOTE = '"""Generated from proto/ when cbmir is built (setup.py); do not edit."""\n'


def generate_stubs(output_root: Path) -> list[Path]:
    """Run protoc (grpcio-tools, a build dependency) on every .proto under proto/; return the generated files."""
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    if not protos:
        raise FileNotFoundError(f"no .proto files under {PROTO_ROOT}")
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = ["protoc", f"-I{PROTO_ROOT}", f"-I{well_known}", f"--python_out={output_root}",
            f"--pyi_out={output_root}", f"--grpc_python_out={output_root}", *[str(p) for p in protos]]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    generated: list[Path] = []
    for proto in protos:
        package_dir = output_root / proto.parent.relative_to(PROTO_ROOT)  # cbmir/v1
        init = package_dir / "__init__.py"
        if not init.exists():
            init.write_text(STUBS_NOTE)
        generated.extend(package_dir.glob(f"{proto.stem}_pb2*.py*"))
    return generated


class BuildWithStubs(build_py):
    """build_py that also generates the stubs: into the build (a wheel), or in place for an editable install."""

    def run(self) -> None:
        super().run()
        output_root = ROOT if self.editable_mode else Path(self.build_lib)
        for path in generate_stubs(output_root):
            self.announce(f"generated {path}", level=2)


setup(cmdclass={"build_py": BuildWithStubs})
