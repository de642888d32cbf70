"""Where a frozen network runs: PyTorch, or its ONNX export under onnxruntime."""
