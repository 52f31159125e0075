"""Frontends: load a model file (TorchScript, ONNX, torch.export) and bring it to ONNX or Relax."""
