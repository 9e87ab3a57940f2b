"""Paddle Inference: the original model, as PaddleSeg deploys it."""
from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING, Any, Sequence

from converter.errors import StageError
from converter.runners.base import Runner

if TYPE_CHECKING:
    import numpy as np

# Paddle's oneDNN pass that folds each residual `elementwise_add` into the
# preceding conv. On this graph (107 such adds) it alone takes ~11.5 s of the
# ~15 s predictor creation, and saves only ~0.7 s per full-size (1024x2048)
# run. Parity and predict run one to a few images, so they skip it; the
# benchmark, which measures steady-state speed, keeps it.
RESIDUAL_FUSE_PASS = "conv_elementwise_add_mkldnn_fuse_pass"
# the passes that keep every variable of the program (placement on oneDNN, inference mode)
UNFUSED_PASSES = ("mkldnn_placement_pass", "is_test_pass")


def check_program(model_path: str) -> Any:
    """The parsed ProgramDesc (paddle_program.read_program): Paddle's C++
    never sees a file that Python cannot parse."""
    from converter.runners.paddle_program import read_program

    return read_program(model_path)


def program_with_fetches(desc, names):
    """desc with one more `fetch` op per variable of names (the model file
    itself is never changed: the caller writes a copy)."""
    from paddle.base.proto import framework_pb2

    block = desc.blocks[0]
    fetches = [op for op in block.ops if op.type == "fetch"]
    for name in names:
        extra = framework_pb2.OpDesc()
        extra.CopyFrom(fetches[-1])
        for slot in extra.inputs:
            slot.arguments[:] = [name]
        for attr in extra.attrs:
            if attr.name == "col":
                attr.i = len(fetches)
        block.ops.append(extra)
        fetches.append(extra)
    return desc


def program_with_logits(model_path: str, out_path: str) -> str:
    """Write a copy of model.pdmodel that also fetches the ArgMax's input.

    The copy is the same program with one more `fetch` op, so the class map
    and the logits come from one run of the shipped network (the same values
    as the --without-argmax export; tests/test_export.py checks it). Returns
    the name of the logits variable."""
    from converter.runners.paddle_program import argmax_logits, describe

    desc = check_program(model_path)
    source = argmax_logits(describe, desc, model_path)
    with open(out_path, "wb") as fh:
        fh.write(program_with_fetches(desc, [source]).SerializeToString())
    return source


def tap_names(model_dir: str) -> set[str]:
    """The float activations of the program (what diagnose can compare)."""
    from converter.runners.paddle_program import activations

    return {name for name, _, _ in activations(check_program(os.path.join(model_dir, "model.pdmodel")))}


class PaddleRunner(Runner):
    runtime = "paddle"

    def __init__(self, model_dir: str, *, threads: int = 2, logits: bool = False, precision: str | None = None,
                 mkldnn: bool = True, fuse_residual_add: bool = False, taps: Sequence[str] = ()):
        """model_dir: the export's folder. precision: Paddle Inference on CPU
        computes in f32. fuse_residual_add: see RESIDUAL_FUSE_PASS. taps:
        intermediate variables to return too, under their own names
        (diagnose's layer-by-layer view)."""
        from converter.util.paddle_env import import_paddle

        super().__init__(model_dir, threads, logits)
        import_paddle()
        import paddle.inference as pi

        model = os.path.join(model_dir, "model.pdmodel")
        params = os.path.join(model_dir, "model.pdiparams")
        for path in (model, params):
            if not os.path.isfile(path):
                raise StageError(f"missing Paddle inference model file: {path} (run the export stage)")
        self.logits_name = None
        check_program(model)
        with tempfile.TemporaryDirectory(prefix="paddle-logits-") as tmp:
            if logits:
                patched = os.path.join(tmp, "model.pdmodel")
                self.logits_name = program_with_logits(model, patched)
                model = patched
            if taps:
                patched = os.path.join(tmp, "taps.pdmodel")
                with open(patched, "wb") as fh:
                    fh.write(program_with_fetches(check_program(model), list(taps)).SerializeToString())
                model = patched
            config = pi.Config(model, params)
            config.disable_gpu()
            config.disable_glog_info()
            config.set_cpu_math_library_num_threads(threads)
            # Memory optimisation lets intermediate tensors share buffers; without
            # it a full-size (1x3x1024x2048) run peaked at ~15 GB of RSS.
            config.enable_memory_optim()
            if mkldnn:
                config.enable_mkldnn()
            if taps:
                # the fusion passes remove the variables they fuse (a BatchNorm's
                # output into its conv): with taps, the program runs as written,
                # on oneDNN's kernels (with no IR pass at all, one 256x512 window of
                # diagnose took 7.5 s instead of 3.2 s on an AVX2 Zen 3)
                for name in config.pass_builder().all_passes():
                    if name not in UNFUSED_PASSES:
                        config.delete_pass(name)
            if mkldnn:
                # One cached shape is enough (we run one size); the default cache
                # keeps primitives for every shape seen, which grows memory.
                config.set_mkldnn_cache_capacity(1)
                if not fuse_residual_add:
                    config.delete_pass(RESIDUAL_FUSE_PASS)
            # The program is read here; the temporary copy may go afterwards.
            self.predictor = pi.create_predictor(config)
        self.input_names = self.predictor.get_input_names()
        self.output_names = self.predictor.get_output_names()
        self.info.update(mkldnn=mkldnn, memory_optim=True, effective_precision="f32",
                         fuse_residual_add=bool(mkldnn and fuse_residual_add))

    def infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        handle = self.predictor.get_input_handle(self.input_names[0])
        handle.reshape(x.shape)
        handle.copy_from_cpu(x)
        self.predictor.run()
        outputs = {n: self.predictor.get_output_handle(n).copy_to_cpu() for n in self.output_names}
        if self.logits_name:
            outputs["logits"] = outputs.pop(self.logits_name)
        return outputs
