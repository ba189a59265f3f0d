"""The proto: generated code up to date, descriptor equal to the contract."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf.descriptor import FieldDescriptor

from frontend._proto import edge_agent_pb2 as pb2
from frontend._proto import edge_agent_pb2_grpc as pb2_grpc
from tests import contract_table as contract

ROOT = Path(__file__).resolve().parent.parent
GENERATED_DIR = ROOT / "frontend" / "_proto"

SCALAR_TYPES = {
    "string": FieldDescriptor.TYPE_STRING,
    "bytes": FieldDescriptor.TYPE_BYTES,
    "bool": FieldDescriptor.TYPE_BOOL,
    "float": FieldDescriptor.TYPE_FLOAT,
    "int32": FieldDescriptor.TYPE_INT32,
    "uint64": FieldDescriptor.TYPE_UINT64,
}


def _load_generator() -> ModuleType:
    path = ROOT / "scripts" / "generate_proto.py"
    spec = importlib.util.spec_from_file_location("_generate_proto_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_up_to_date(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    generator = _load_generator()
    # generate() prepends the venv's scripts folder to PATH; undo it after.
    monkeypatch.setenv("PATH", os.environ.get("PATH", ""))
    generator.generate(tmp_path)
    fresh_dir = tmp_path / generator.PACKAGE
    assert sorted(generator.GENERATED) == sorted(
        p.name for p in fresh_dir.iterdir() if p.is_file()
    ), "generate() wrote other files than it declares"
    stale = []
    for name in generator.GENERATED:
        fresh = (fresh_dir / name).read_bytes()
        committed = (GENERATED_DIR / name).read_bytes()
        if fresh != committed:
            stale.append(name)
    assert not stale, (
        f"frontend/_proto is stale for {stale}: run scripts/generate_proto.py"
    )


def _type_of(field: FieldDescriptor) -> str:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        assert field.message_type is not None
        full = field.message_type.full_name
    elif field.type == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        full = field.enum_type.full_name
    else:
        for name, value in SCALAR_TYPES.items():
            if value == field.type:
                return name
        return f"<type {field.type}>"
    prefix = contract.PACKAGE + "."
    return full[len(prefix) :] if full.startswith(prefix) else full


def test_package_and_options() -> None:
    assert pb2.DESCRIPTOR.package == contract.PACKAGE
    assert pb2.DESCRIPTOR.GetOptions().java_package == contract.JAVA_PACKAGE
    # Clients import edge_agent_pb2 / edge_agent_pb2_grpc.EdgeAgentStub.
    assert pb2.__name__.rsplit(".", 1)[-1] == "edge_agent_pb2"
    assert hasattr(pb2_grpc, "EdgeAgentStub")
    assert pb2.DESCRIPTOR.name.rsplit("/", 1)[-1] == contract.PROTO_FILE


def test_messages_match_the_contract() -> None:
    by_name = pb2.DESCRIPTOR.message_types_by_name
    problems: list[str] = []
    for message, fields in contract.MESSAGES.items():
        if message not in by_name:
            problems.append(f"message {message} is missing")
            continue
        descriptor = by_name[message]
        extra = dict(contract.ALLOWED_EXTRA_FIELDS.get(message, {}))
        expected = {f.number: f for f in fields}
        for actual in descriptor.fields:
            where = f"{message}.{actual.name} = {actual.number}"
            want = expected.pop(actual.number, None)
            if want is None:
                if extra.pop(actual.number, None) == _type_of(actual) and not (
                    actual.is_repeated
                ):
                    continue
                problems.append(f"{where}: not in the contract")
                continue
            if actual.name != want.name:
                problems.append(f"{where}: the contract names it {want.name}")
            if _type_of(actual) != want.type:
                problems.append(f"{where}: type {_type_of(actual)}, not {want.type}")
            if actual.is_repeated != want.repeated:
                problems.append(f"{where}: repeated is {actual.is_repeated}")
            oneof = actual.containing_oneof
            # proto3 'optional' makes a synthetic oneof; the contract has none.
            oneof_name = oneof.name if oneof is not None else None
            if oneof_name != want.oneof:
                problems.append(f"{where}: oneof {oneof_name}, not {want.oneof}")
        problems += [
            f"{message}.{f.name} = {n} is missing" for n, f in expected.items()
        ]
    assert not problems, "\n".join(problems)


def test_no_messages_beyond_the_contract() -> None:
    names = set(pb2.DESCRIPTOR.message_types_by_name)
    assert names == set(contract.MESSAGES)


def test_enums_match_the_contract() -> None:
    enums = pb2.DESCRIPTOR.enum_types_by_name
    assert set(enums) == set(contract.ENUMS)
    for enum, values in contract.ENUMS.items():
        actual = [(v.name, v.number) for v in enums[enum].values]
        assert actual == list(values)
        # Clients read them at package level, as pb2.RUNNING.
        for name, number in values:
            assert getattr(pb2, name) == number


def test_service_matches_the_contract() -> None:
    services = pb2.DESCRIPTOR.services_by_name
    assert list(services) == [contract.SERVICE]
    service = services[contract.SERVICE]
    assert service.full_name == f"{contract.PACKAGE}.{contract.SERVICE}"
    methods = {m.name: m for m in service.methods}
    assert sorted(methods) == sorted(contract.METHODS)
    for name, (request, response) in contract.METHODS.items():
        method = methods[name]
        assert method.input_type.full_name == f"{contract.PACKAGE}.{request}"
        assert method.output_type.full_name == f"{contract.PACKAGE}.{response}"
        assert not method.client_streaming and not method.server_streaming
    stub_source = (GENERATED_DIR / "edge_agent_pb2_grpc.py").read_text()
    for name in contract.METHODS:
        assert f"'/{contract.PACKAGE}.{contract.SERVICE}/{name}'" in stub_source


@pytest.mark.parametrize("number", [2, 3])
def test_rendered_contract_proto_names_every_field(number: int) -> None:
    """The foreign client's proto carries every field of the table."""
    text = contract.render_proto(number)
    for message, fields in contract.MESSAGES.items():
        assert f"message {message} {{" in text
        for field in fields:
            if message == "AnomalyMaskParams":
                assert f"SharedMemoryHandle shared_memory_handle = {number};" in text
            else:
                assert f"{field.name} = {field.number};" in text
