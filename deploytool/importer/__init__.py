"""The importer: ONNX to TVM Relax, with our converters for operators TVM lacks."""
