"""Generates the API reference, docs/api.md, from the protos under protos/ and their comments.

protoc compiles the protos with their source info (the comments) into a descriptor set; this
writes every service with its RPCs, every message with its fields and every enum with its
values, in the order of the files. The output is committed; tests/test_project.py regenerates
it and fails on any difference.
"""

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUTPUT = ROOT / "docs" / "api.md"

# Paths into a FileDescriptorProto's source info (descriptor.proto's field numbers).
MESSAGE, ENUM, SERVICE = 4, 5, 6
FIELD, NESTED_MESSAGE, NESTED_ENUM, ONEOF = 2, 3, 4, 8
ENUM_VALUE, METHOD = 2, 2

FieldType = descriptor_pb2.FieldDescriptorProto
SCALARS = {
    value: name.removeprefix("TYPE_").lower()
    for name, value in FieldType.Type.items()
    if name not in ("TYPE_MESSAGE", "TYPE_ENUM", "TYPE_GROUP")
}


def load(protos: Path = PROTOS) -> list[descriptor_pb2.FileDescriptorProto]:
    """The project's protos (not their imports), compiled with their comments."""
    sources = sorted(p.relative_to(protos).as_posix() for p in protos.rglob("*.proto"))
    include_wkt = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "descriptors.binpb"
        args = [
            "grpc_tools.protoc",
            f"-I{protos}",
            f"-I{include_wkt}",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            *sources,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    # Services first (in path order), then the shared types.
    return sorted(files, key=lambda f: (not f.service, f.name))


def render(files: list[descriptor_pb2.FileDescriptorProto]) -> str:
    """The whole reference as Markdown."""
    return _Renderer(files).render()


class _Renderer:
    def __init__(self, files: list[descriptor_pb2.FileDescriptorProto]) -> None:
        self.files = files
        # Every type of the protos by full name ("creditline.type.v1.Money"), for links. A
        # type is headed by its short name unless another type has the same one.
        self.types: dict[str, str] = {}
        self.map_entries: dict[str, descriptor_pb2.DescriptorProto] = {}
        for file in files:
            for message, name in _messages(file.package, file.message_type):
                if message.options.map_entry:
                    self.map_entries[name] = message
                else:
                    self.types[name] = name.removeprefix(f"{file.package}.")
            for _, name in _enums(file.package, file.message_type, file.enum_type):
                self.types[name] = name.removeprefix(f"{file.package}.")
        taken = Counter(self.types.values())
        self.headings = {
            name: short if taken[short] == 1 else name for name, short in self.types.items()
        }

    def render(self) -> str:
        out = [
            "# API reference",
            "",
            "Generated from the protos under `protos/` and their comments by",
            "`scripts/gen_api_docs.py` (`make gen`): edit the protos, not this file.",
            "",
        ]
        for file in self.files:
            for service in file.service:
                rpcs = ", ".join(f"`{m.name}`" for m in service.method)
                out.append(f"- [{service.name}](#{_anchor(service.name)}) ({file.package}): {rpcs}")
        out.append("")
        packages = sorted({f.package for f in self.files if not f.service})
        out.append("Shared types: " + ", ".join(f"[{p}](#{_anchor(p)})" for p in packages) + ".")
        package = None
        for file in self.files:
            if file.package != package:
                package = file.package
                out += ["", f"## {package}"]
            out += ["", f"Defined in `{file.name}`."]
            out += self._file(file)
        return "\n".join(out).rstrip() + "\n"

    def _file(self, file: descriptor_pb2.FileDescriptorProto) -> list[str]:
        comments = {tuple(loc.path): loc for loc in file.source_code_info.location}
        out: list[str] = []
        for i, service in enumerate(file.service):
            out += self._service(service, comments, (SERVICE, i))
        # Messages and enums in the order they are declared in the file.
        declarations = [
            (comments[(MESSAGE, i)].span[0], "message", m, (MESSAGE, i))
            for i, m in enumerate(file.message_type)
        ] + [
            (comments[(ENUM, i)].span[0], "enum", e, (ENUM, i))
            for i, e in enumerate(file.enum_type)
        ]
        for _, kind, declaration, path in sorted(declarations, key=lambda d: d[0]):
            name = f"{file.package}.{declaration.name}"
            if kind == "message":
                out += self._message(declaration, name, comments, path)
            else:
                out += self._enum(declaration, name, comments, path)
        return out

    def _service(self, service, comments, path) -> list[str]:
        out = ["", f"### {service.name}", ""]
        out += _paragraphs(comments, path)
        out += ["| RPC | Request | Response | Description |", "| --- | --- | --- | --- |"]
        for i, method in enumerate(service.method):
            request = self._type(method.input_type)
            response = self._type(method.output_type)
            if method.client_streaming:
                request = f"stream {request}"
            if method.server_streaming:
                response = f"stream {response}"
            text = _cell(comments, (*path, METHOD, i))
            out.append(f"| `{method.name}` | {request} | {response} | {text} |")
        return out

    def _message(self, message, name, comments, path) -> list[str]:
        if message.options.map_entry:
            return []
        out = ["", f"### {self.headings[name]}", ""]
        out += _paragraphs(comments, path)
        if message.field:
            out += ["| Field | Number | Type | Description |", "| --- | --- | --- | --- |"]
            for i, field in enumerate(message.field):
                text = _cell(comments, (*path, FIELD, i))
                if field.HasField("oneof_index") and not field.proto3_optional:
                    oneof = message.oneof_decl[field.oneof_index].name
                    text = f"One of `{oneof}`. {text}".strip()
                row = f"| `{field.name}` | {field.number} | {self._field_type(field)} | {text} |"
                out.append(row)
        else:
            out.append("No fields.")
        for i, oneof in enumerate(message.oneof_decl):
            if not any(_in_oneof(f, i) for f in message.field if not f.proto3_optional):
                continue  # the synthetic oneof of a proto3 `optional` field
            text = " ".join(_comment(comments, (*path, ONEOF, i)))
            out += ["", f"Oneof `{oneof.name}`: {text}".rstrip()]
        if message.reserved_range or message.reserved_name:
            numbers = [
                str(r.start) if r.end - r.start == 1 else f"{r.start} to {r.end - 1}"
                for r in message.reserved_range
            ]
            names = [f"`{n}`" for n in message.reserved_name]
            out += ["", "Reserved: " + ", ".join(numbers + names) + "."]
        for i, nested in enumerate(message.nested_type):
            out += self._message(
                nested, f"{name}.{nested.name}", comments, (*path, NESTED_MESSAGE, i)
            )
        for i, nested in enumerate(message.enum_type):
            out += self._enum(nested, f"{name}.{nested.name}", comments, (*path, NESTED_ENUM, i))
        return out

    def _enum(self, enum, name, comments, path) -> list[str]:
        out = ["", f"### {self.headings[name]}", ""]
        out += _paragraphs(comments, path)
        out += ["| Value | Number | Description |", "| --- | --- | --- |"]
        for i, value in enumerate(enum.value):
            text = _cell(comments, (*path, ENUM_VALUE, i))
            out.append(f"| `{value.name}` | {value.number} | {text} |")
        return out

    def _field_type(self, field) -> str:
        if field.type_name in self.map_entries:
            key, value = self.map_entries[field.type_name].field
            return f"map<{self._field_type(key)}, {self._field_type(value)}>"
        if field.type in (FieldType.TYPE_MESSAGE, FieldType.TYPE_ENUM):
            shown = self._type(field.type_name)
        else:
            shown = f"`{SCALARS[field.type]}`"
        if field.label == FieldType.LABEL_REPEATED:
            return f"repeated {shown}"
        if field.proto3_optional:
            return f"optional {shown}"
        return shown

    def _type(self, type_name: str) -> str:
        name = type_name.lstrip(".")
        if name in self.types:
            return f"[{self.types[name]}](#{_anchor(self.headings[name])})"
        return f"`{name}`"


def _messages(scope: str, messages):
    for message in messages:
        name = f"{scope}.{message.name}"
        yield message, name
        yield from _messages(name, message.nested_type)


def _enums(scope: str, messages, enums):
    for enum in enums:
        yield enum, f"{scope}.{enum.name}"
    for message in messages:
        yield from _enums(f"{scope}.{message.name}", message.nested_type, message.enum_type)


def _in_oneof(field, index: int) -> bool:
    return field.HasField("oneof_index") and field.oneof_index == index


def _comment(comments, path) -> list[str]:
    """The paragraphs of an element's leading and trailing comments."""
    location = comments.get(tuple(path))
    if location is None:
        return []
    text = "\n".join(
        c for c in (location.leading_comments, location.trailing_comments) if c.strip()
    )
    paragraphs, current = [], []
    for line in text.splitlines():
        line = line.removeprefix(" ").rstrip()
        if line:
            current.append(line.strip())
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return paragraphs


def _paragraphs(comments, path) -> list[str]:
    """An element's comment as Markdown paragraphs, each followed by a blank line."""
    out = []
    for paragraph in _comment(comments, path):
        out += [paragraph, ""]
    return out


def _cell(comments, path) -> str:
    """An element's comment for a table cell."""
    return "<br><br>".join(_comment(comments, path)).replace("|", "\\|")


def _anchor(heading: str) -> str:
    """The anchor a Markdown renderer gives a heading (GitHub's rule, for these names)."""
    return "".join(c for c in heading.lower() if c.isalnum() or c in "-_")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUTPUT, help=f"default: {OUTPUT.name}")
    options = parser.parse_args()
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(render(load()), encoding="utf-8")
    print(f"wrote {options.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
