"""ocrnet-convert: PaddleSeg release-2.3 OCRNet-HRNet_W48 to ONNX and OpenVINO IR, verified."""
__version__ = "0.1.0"
