"""A trained model outside training: the Python API (`stklia.load`) and export to TorchScript and ONNX."""
