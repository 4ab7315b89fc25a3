"""Generates the Python code of every proto under protos/ into the `creditline` package.

Proto directories match their packages and everything is generated with `-I protos`, so the
generated imports (`from creditline.type.v1 import risk_pb2`) are right as they come out.
The output is committed; tests/test_project.py regenerates it and fails on any difference.
"""

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


def generate(out_dir: Path) -> list[Path]:
    """Writes the messages, stubs and type stubs of every proto into out_dir."""
    sources = sorted(p.relative_to(PROTOS).as_posix() for p in PROTOS.rglob("*.proto"))
    include_wkt = Path(protoc.__file__).parent / "_proto"
    plugins = Path(sys.executable).parent  # mypy-protobuf's plugins sit beside this Python
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{include_wkt}",
        f"--plugin=protoc-gen-mypy={plugins / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={plugins / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # Packages need an __init__.py to be found by the install and by imports.
    for directory in {p.parent for p in out_dir.rglob("*_pb2.py")}:
        while directory != out_dir:
            (directory / "__init__.py").touch()
            directory = directory.parent
    return sorted((out_dir / "creditline").rglob("*.py*"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: repo root)")
    options = parser.parse_args()
    files = generate(options.out)
    print(f"generated {len(files)} files under {options.out / 'creditline'}", file=sys.stderr)


if __name__ == "__main__":
    main()
