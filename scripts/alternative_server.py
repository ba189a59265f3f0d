"""The obvious alternative to edge-agent, as a benchmark's point of comparison.

A plain single-process ``grpc.aio`` server of the Edge Agent proto, the way a
developer would write it in an afternoon: every model component of a folder
loaded at start into one ONNX Runtime session each (the agent's session
options, one intra-op thread), images inline in the request (``byte_data``),
the model run straight in the handler on the event loop, the mask colored
with a palette lookup and returned inline. No worker processes, no shared
memory, no pinning, no admission control. Messages up to 64 MiB each way, so
that 4096x4096 images fit.

Run: ``.venv/bin/python scripts/alternative_server.py --socket unix:///tmp/a.sock
--model-dir models``; SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from frontend._proto import edge_agent_pb2 as pb2  # noqa: E402
from frontend._proto import edge_agent_pb2_grpc as pb2_grpc  # noqa: E402
from workers.model import session_options  # noqa: E402

MESSAGE_LIMIT = 64 << 20


class Model:
    """One component: its session, threshold and label colors."""

    def __init__(self, folder: Path) -> None:
        manifest = json.loads((folder / "manifest.json").read_text())
        self.threshold = float(manifest["threshold"])
        self.labels = [(label["name"], label["color"]) for label in manifest["labels"]]
        self.session = ort.InferenceSession(
            str(folder / "model.onnx"),
            sess_options=session_options(1),
            providers=["CPUExecutionProvider"],
        )
        self.outputs = ["score", "mask"] if self.labels else ["score"]
        colors = ["#FFFFFF"] + [color for _, color in self.labels]
        self.palette = np.array(
            [[int(c[i : i + 2], 16) for i in (1, 3, 5)] for c in colors], np.uint8
        )


class Servicer(pb2_grpc.EdgeAgentServicer):
    def __init__(self, models: dict[str, Model]) -> None:
        self.models = models

    async def DetectAnomalies(
        self, request: pb2.DetectAnomaliesRequest, context: grpc.aio.ServicerContext
    ) -> pb2.DetectAnomaliesResponse:
        model = self.models.get(request.model_component)
        if model is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such model")
        assert model is not None
        bitmap = request.bitmap
        if len(bitmap.byte_data) != bitmap.width * bitmap.height * 3:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad image size")
        image = np.frombuffer(bitmap.byte_data, np.uint8).reshape(
            bitmap.height, bitmap.width, 3
        )
        outputs = model.session.run(model.outputs, {"image": image})
        score = min(max(float(outputs[0].reshape(-1)[0]), 0.0), 1.0)
        anomalous = score >= model.threshold
        result = pb2.DetectAnomalyResult(
            is_anomalous=anomalous,
            confidence=score if anomalous else 1 - score,
            anomaly_score=score,
            anomaly_threshold=model.threshold,
        )
        if len(outputs) > 1:
            self.add_mask(model, outputs[1], result)
        return pb2.DetectAnomaliesResponse(detect_anomaly_result=result)

    def add_mask(
        self, model: Model, mask: np.ndarray, result: pb2.DetectAnomalyResult
    ) -> None:
        counts = np.bincount(mask.reshape(-1), minlength=len(model.palette))
        names = ["background", *(name for name, _ in model.labels)]
        colors = ["#FFFFFF", *(color for _, color in model.labels)]
        for index, (name, color) in enumerate(zip(names, colors, strict=True)):
            if index == 0 or counts[index]:
                anomaly = result.anomalies.add(name=name)
                anomaly.pixel_anomaly.hex_color = color
                anomaly.pixel_anomaly.total_percentage_area = float(
                    counts[index] / mask.size
                )
        result.anomaly_mask.width = mask.shape[1]
        result.anomaly_mask.height = mask.shape[0]
        result.anomaly_mask.byte_data = model.palette[mask].tobytes()

    async def ListModels(
        self, request: pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb2.ListModelsResponse:
        return pb2.ListModelsResponse(
            models=[
                pb2.ModelMetadata(model_component=name, status=pb2.RUNNING)
                for name in self.models
            ]
        )


async def serve(address: str, model_dir: Path) -> None:
    models = {
        folder.name: Model(folder)
        for folder in sorted(model_dir.iterdir())
        if (folder / "manifest.json").is_file()
    }
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MESSAGE_LIMIT),
            ("grpc.max_send_message_length", MESSAGE_LIMIT),
        ]
    )
    pb2_grpc.add_EdgeAgentServicer_to_server(Servicer(models), server)
    server.add_insecure_port(address)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(grace=1)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", required=True, help="e.g. unix:///tmp/a.sock")
    parser.add_argument("--model-dir", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.socket, args.model_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
