"""One model component loaded into ONNX Runtime, ready to score images.

The session is created after the process is pinned, with as many intra-op
threads as the worker has cores, one inter-op thread and spinning off, so
that workers on one machine do not oversubscribe it. The image reaches the
graph as an OrtValue over the caller's buffer: no copy, whatever its size.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from shared.component import ModelComponent

INPUT_NAME = "image"
SCORE_OUTPUT = "score"
MASK_OUTPUT = "mask"


class ModelLoadError(RuntimeError):
    """The component's graph cannot be loaded or does not fit the format."""


@dataclass(frozen=True)
class Prediction:
    score: float
    label_mask: np.ndarray | None


def session_options(threads: int) -> ort.SessionOptions:
    """How every session of the agent's is set up (also used offline)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


class ModelRunner:
    """Scores uint8 HWC RGB images with one component's graph."""

    def __init__(self, component: ModelComponent, threads: int) -> None:
        self.component = component
        try:
            self._session = ort.InferenceSession(
                str(component.model_path),
                sess_options=session_options(threads),
                providers=["CPUExecutionProvider"],
            )
        except Exception as exc:  # ORT raises its own untyped errors here.
            raise ModelLoadError(f"{component.model_path}: {exc}") from exc
        self._outputs = [SCORE_OUTPUT]
        if component.is_segmentation:
            self._outputs.append(MASK_OUTPUT)
        self._check_signature()

    def _check_signature(self) -> None:
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
            names = [i.name for i in inputs]
            raise ModelLoadError(
                f"the graph must take one input named {INPUT_NAME!r}; it takes {names}"
            )
        shape = inputs[0].shape
        if (
            inputs[0].type != "tensor(uint8)"
            or len(shape) != 3
            or shape[2] != 3
            or isinstance(shape[0], int)
            or isinstance(shape[1], int)
        ):
            raise ModelLoadError(
                f"input {INPUT_NAME!r} must be uint8 [height, width, 3] with "
                f"height and width dynamic; it is {inputs[0].type} {shape}"
            )
        present = {o.name: o for o in self._session.get_outputs()}
        missing = [name for name in self._outputs if name not in present]
        if missing:
            raise ModelLoadError(
                f"the graph lacks output(s) {missing} that a "
                f"{self.component.kind} component must have"
            )
        expected = {
            SCORE_OUTPUT: ("tensor(float)", None),
            MASK_OUTPUT: ("tensor(uint8)", 2),
        }
        for name in self._outputs:
            dtype, rank = expected[name]
            output = present[name]
            if output.type != dtype or (rank is not None and len(output.shape) != rank):
                raise ModelLoadError(
                    f"output {name!r} must be {dtype}"
                    + (f" of rank {rank}" if rank else "")
                    + f"; it is {output.type} {output.shape}"
                )

    def warm_up(self, runs: int = 3) -> float:
        """Run the graph on blank images of the working size; return seconds."""
        width, height = self.component.input_size
        blank = np.zeros((height, width, 3), dtype=np.uint8)
        start = time.perf_counter()
        for _ in range(runs):
            self.predict(blank)
        return time.perf_counter() - start

    def input_value(self, image: np.ndarray) -> ort.OrtValue:
        """The graph input over ``image``'s own memory (no copy)."""
        if image.dtype != np.uint8 or not image.flags.c_contiguous:
            # A copy here would be silent in ORT; refuse it loudly instead.
            raise ValueError("images must be C-contiguous uint8 arrays")
        return ort.OrtValue.ortvalue_from_numpy(image)

    def predict(self, image: np.ndarray) -> Prediction:
        outputs = self._session.run_with_ort_values(
            self._outputs, {INPUT_NAME: self.input_value(image)}
        )
        score = float(np.asarray(outputs[0].numpy()).reshape(-1)[0])
        mask = outputs[1].numpy() if len(outputs) > 1 else None
        if mask is not None and mask.shape != image.shape[:2]:
            raise ValueError(
                f"the graph returned a mask of shape {mask.shape} for an image "
                f"of {image.shape[:2]}; masks must have the image's size"
            )
        return Prediction(score=min(max(score, 0.0), 1.0), label_mask=mask)
