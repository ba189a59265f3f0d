"""Builds edge-agent model components (manifest + ONNX graph) from good photos."""
