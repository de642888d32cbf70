"""A fitted network at work: probabilities over images (with test-time augmentation), the
`predict` command, metrics of held-out predictions, and export to ONNX or TorchScript."""
