"""ONNX Runtime, CPU execution provider."""
import os

from ..errors import StageError


class OrtRunner:
    name = "onnxruntime"

    def load(self, model_path, threads=2):
        import onnxruntime as ort

        if not os.path.isfile(model_path):
            raise StageError(f"missing ONNX model: {model_path} (run the onnx stage)")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.info = {"threads": threads, "providers": self.session.get_providers()}

    def infer(self, x):
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, {self.input_name: x})))
