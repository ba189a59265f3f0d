"""The Edge Agent wire contract as data, and a ``.proto`` rendered from it.

This table is written from the contract (the public documentation and
client code of the original Lookout for Vision Edge Agent), independently
of ``proto/edge-agent.proto``. Tests compare the project's compiled
descriptor with it, and compile a foreign client's own proto from it.
"""

from __future__ import annotations

from dataclasses import dataclass

PACKAGE = "AWS.LookoutVision"
JAVA_PACKAGE = "com.amazonaws.lookoutvision"
SERVICE = "EdgeAgent"
PROTO_FILE = "edge-agent.proto"

SCALARS = ("string", "bytes", "bool", "float", "int32", "uint64")


@dataclass(frozen=True)
class Field:
    name: str
    number: int
    type: str  # a scalar from SCALARS, or a message or enum name of PACKAGE
    repeated: bool = False
    oneof: str | None = None


def _model_info() -> tuple[Field, ...]:
    return (
        Field("model_component", 1, "string"),
        Field("lookout_vision_model_arn", 2, "string"),
        Field("status", 3, "ModelStatus"),
        Field("status_message", 4, "string"),
    )


def _component_name() -> tuple[Field, ...]:
    return (Field("model_component", 1, "string"),)


# Message name -> fields, in the contract's order.
MESSAGES: dict[str, tuple[Field, ...]] = {
    "SharedMemoryHandle": (
        Field("name", 1, "string"),
        Field("size", 2, "uint64"),
        Field("offset", 3, "uint64"),
    ),
    "Bitmap": (
        Field("width", 1, "int32"),
        Field("height", 2, "int32"),
        Field("byte_data", 3, "bytes", oneof="data"),
        Field("shared_memory_handle", 4, "SharedMemoryHandle", oneof="data"),
    ),
    "AnomalyMaskParams": (Field("shared_memory_handle", 2, "SharedMemoryHandle"),),
    "PixelAnomaly": (
        Field("total_percentage_area", 1, "float"),
        Field("hex_color", 2, "string"),
    ),
    "Anomaly": (
        Field("name", 1, "string"),
        Field("pixel_anomaly", 2, "PixelAnomaly"),
    ),
    "DetectAnomaliesRequest": (
        Field("model_component", 1, "string"),
        Field("bitmap", 2, "Bitmap"),
        Field("anomaly_mask_params", 3, "AnomalyMaskParams"),
    ),
    "DetectAnomalyResult": (
        Field("is_anomalous", 1, "bool"),
        Field("confidence", 2, "float"),
        Field("anomaly_mask", 3, "Bitmap"),
        Field("anomalies", 4, "Anomaly", repeated=True),
        Field("anomaly_score", 5, "float"),
        Field("anomaly_threshold", 6, "float"),
    ),
    "DetectAnomaliesResponse": (
        Field("detect_anomaly_result", 1, "DetectAnomalyResult"),
    ),
    "ModelDescription": _model_info(),
    "ModelMetadata": _model_info(),
    "StartModelRequest": _component_name(),
    "StopModelRequest": _component_name(),
    "DescribeModelRequest": _component_name(),
    "StartModelResponse": (Field("status", 1, "ModelStatus"),),
    "StopModelResponse": (Field("status", 1, "ModelStatus"),),
    "ListModelsRequest": (),
    "ListModelsResponse": (Field("models", 1, "ModelMetadata", repeated=True),),
    "DescribeModelResponse": (Field("model_description", 1, "ModelDescription"),),
}

# Fields a server may add beyond the table: the contract lets the agent read
# the mask handle under number 3 too (one published copy numbers it 3).
# Message name -> {number: type}.
ALLOWED_EXTRA_FIELDS: dict[str, dict[int, str]] = {
    "AnomalyMaskParams": {3: "SharedMemoryHandle"},
}

ENUMS: dict[str, tuple[tuple[str, int], ...]] = {
    "ModelStatus": (
        ("STOPPED", 0),
        ("STARTING", 1),
        ("RUNNING", 2),
        ("FAILED", 3),
        ("STOPPING", 4),
    ),
}

# RPC name -> (input message, output message); all unary.
METHODS: dict[str, tuple[str, str]] = {
    "DetectAnomalies": ("DetectAnomaliesRequest", "DetectAnomaliesResponse"),
    "StartModel": ("StartModelRequest", "StartModelResponse"),
    "StopModel": ("StopModelRequest", "StopModelResponse"),
    "ListModels": ("ListModelsRequest", "ListModelsResponse"),
    "DescribeModel": ("DescribeModelRequest", "DescribeModelResponse"),
}


def _field_line(field: Field, number: int, indent: str) -> str:
    label = "repeated " if field.repeated else ""
    return f"{indent}{label}{field.type} {field.name} = {number};"


def render_proto(mask_handle_number: int = 2) -> str:
    """The contract as ``edge-agent.proto`` text, as a client would write it.

    ``mask_handle_number`` numbers ``AnomalyMaskParams.shared_memory_handle``:
    2 as in the contract, 3 as in the other published copy.
    """
    lines = [
        'syntax = "proto3";',
        "",
        f"package {PACKAGE};",
        "",
        f'option java_package = "{JAVA_PACKAGE}";',
        "",
        f"service {SERVICE} {{",
    ]
    lines += [
        f"  rpc {rpc}({request}) returns ({response});"
        for rpc, (request, response) in METHODS.items()
    ]
    lines.append("}")
    for enum, values in ENUMS.items():
        lines += ["", f"enum {enum} {{"]
        lines += [f"  {name} = {number};" for name, number in values]
        lines.append("}")
    for message, fields in MESSAGES.items():
        lines += ["", f"message {message} {{"]
        oneofs: dict[str, list[Field]] = {}
        for field in fields:
            if field.oneof is not None:
                oneofs.setdefault(field.oneof, []).append(field)
                continue
            number = field.number
            if message == "AnomalyMaskParams" and field.name == "shared_memory_handle":
                number = mask_handle_number
            lines.append(_field_line(field, number, "  "))
        for oneof, members in oneofs.items():
            lines.append(f"  oneof {oneof} {{")
            lines += [_field_line(f, f.number, "    ") for f in members]
            lines.append("  }")
        lines.append("}")
    return "\n".join(lines) + "\n"
