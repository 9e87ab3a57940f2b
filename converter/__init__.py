"""ocrnet-convert: PaddleSeg OCRNet-HRNet models, and any PaddleSeg inference model,
to ONNX and OpenVINO IR, verified."""
__version__ = "0.1.0"
