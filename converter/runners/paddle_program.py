"""Paddle inference programs (model.pdmodel) read, checked and described in Python.

Paddle Inference segfaults on a garbage program and paddle2onnx returns an
empty graph, so every program is parsed here first. describe() tells what a
PaddleSeg export computes: its input, its one output, and whether that
output is the class map (argmax), class probabilities (softmax) or raw
logits (none), looking through the identity `scale` ops that paddle.jit.save
appends to outputs. with_argmax() gives a program whose output is the class
map whatever it was, so that every later stage sees one interface.
"""
import os

from converter.errors import ConverterError, StageError

MAX_PROGRAM_BYTES = 256 << 20   # a PaddleSeg program is a few MB; its weights are in .pdiparams
INT32 = 2                        # paddle's VarType for int32, as arg_max's dtype attribute takes it
# a JSON file where a ProgramDesc is expected: runners.pir_program reads it
PIR_HINT = ("this is a Paddle 3 PIR program (.json), not a legacy ProgramDesc: give its folder to "
            "`init --inference-model`, which converts it with the Paddle 3 toolchain")


def program_bytes(path, limit, what):
    """A program file's bytes (legacy or PIR): at most limit, from a regular
    file; a StageError naming the file otherwise."""
    from converter.errors import InputRefused
    from converter.util.fsutil import read_limited

    try:
        return read_limited(path, limit, what)
    except InputRefused as exc:
        raise StageError(f"{path}: {exc}") from None
    except OSError as exc:
        raise StageError(f"cannot read {path}: {exc.strerror}") from None


def argmax_logits(describe, program, where):
    """The class scores an argmax program's output is taken from (for a runner's
    logits); describe: paddle_program.describe or pir_program.describe_pir."""
    try:
        found = describe(program, where)
    except ConverterError as exc:
        raise StageError(str(exc)) from None
    if found["output_op"] != "argmax":
        raise StageError(f"{where}: its output is not an arg_max over the classes; is this an argmax export?")
    return found["logits"]


def read_program(model_path):
    """The parsed ProgramDesc of model.pdmodel; a StageError for anything else."""
    from google.protobuf.message import DecodeError

    from converter.util.paddle_env import import_paddle

    if model_path.endswith(".json"):
        raise StageError(f"{model_path}: {PIR_HINT}")
    import_paddle()
    from paddle.base.proto import framework_pb2

    data = program_bytes(model_path, MAX_PROGRAM_BYTES, "Paddle program")
    try:
        desc = framework_pb2.ProgramDesc.FromString(data)
    except (DecodeError, ValueError, RuntimeError):
        if data.lstrip()[:1] in (b"{", b"["):
            raise StageError(f"{model_path}: {PIR_HINT}") from None
        raise StageError(f"{model_path}: not a Paddle program (cannot be parsed)") from None
    types = {op.type for block in desc.blocks for op in block.ops}
    if not desc.blocks or not {"feed", "fetch"} <= types:
        raise StageError(f"{model_path}: not a Paddle inference program (no feed/fetch ops)")
    return desc


# bytes per value of paddle's VarType ids (bool, int16, int32, int64, fp16, fp32, fp64, uint8, int8, bf16)
_ITEM_BYTES = {0: 1, 1: 2, 2: 4, 3: 8, 4: 2, 5: 4, 6: 8, 20: 1, 21: 1, 22: 2}


def parameter_bytes(desc):
    """The bytes of the program's parameters' values (persistable tensors of
    static shape): a .pdiparams holds them, each behind a small header."""
    import math

    block = desc.blocks[0]
    return sum(math.prod(v.type.lod_tensor.tensor.dims) * _ITEM_BYTES.get(v.type.lod_tensor.tensor.data_type, 4)
               for v in block.vars if v.persistable and v.type.HasField("lod_tensor")
               and v.name not in ("feed", "fetch") and all(d > 0 for d in v.type.lod_tensor.tensor.dims))


def check_parameters_file(desc, params_path):
    """A .pdiparams smaller than the program's parameters is cut short:
    paddle2onnx would say only that a weight is undefined."""
    need, have = parameter_bytes(desc), os.path.getsize(params_path)
    if have < need:
        raise StageError(f"{params_path}: {have} bytes, but the program's parameters need at least {need} "
                         "(a truncated or foreign .pdiparams)")


def _io(op, slot, side="inputs"):
    return [a for v in getattr(op, side) if v.parameter == slot for a in v.arguments]


def _one(op, slot, where, side="inputs"):
    """The variable an op reads (or writes) in slot; a crafted op without it is one ConverterError."""
    found = _io(op, slot, side)
    if not found:
        raise ConverterError(f"{where}: its {op.type!r} op has no {'input' if side == 'inputs' else 'output'} "
                             f"{slot!r} (not a program paddle writes)")
    return found[0]


def _attr(op, name):
    for a in op.attrs:
        if a.name == name:
            return a
    return None


def _producers(block):
    return {out: op for op in block.ops for v in op.outputs for out in v.arguments}


def _dims(block, name):
    for v in block.vars:
        if v.name == name and v.type.HasField("lod_tensor"):
            return list(v.type.lod_tensor.tensor.dims), v.type.lod_tensor.tensor.data_type
    return None, None


def _through_identity(producers, name, where):
    """The variable an output really is: jit.save's identity scale ops skipped."""
    for _ in range(8):
        op = producers.get(name)
        if op is None or op.type != "scale":
            return name
        scale, bias = _attr(op, "scale"), _attr(op, "bias")
        if not (scale and scale.f == 1.0 and bias and bias.f == 0.0):
            return name
        name = _one(op, "X", where)
    return name


def _free_name(taken):
    """A variable name the program does not use (for an argmax added)."""
    preferred = ("argmax_0.tmp_0", "class_map", "class_map_0", "class_map_1")
    return next(n for n in (*preferred, *(f"class_map_{i}" for i in range(2, len(taken) + 3))) if n not in taken)


def describe(desc, where):
    """{input, input_dims, output, output_op, logits, classes, dtype, free_name} of a
    one-input, one-output segmentation program; ConverterError naming what
    is not so. `logits` is the class-score variable (for argmax: its input),
    `classes` its channel count (None when the program leaves it dynamic);
    `free_name` a variable name the program does not use, for an argmax added."""
    block = desc.blocks[0]
    feeds = [_one(op, "Out", where, "outputs") for op in block.ops if op.type == "feed"]
    fetches = [_one(op, "X", where) for op in block.ops if op.type == "fetch"]
    if len(feeds) != 1 or len(fetches) != 1:
        raise ConverterError(f"{where}: expected one input and one output, found {len(feeds)} and {len(fetches)}")
    producers = _producers(block)
    output = fetches[0]
    real = _through_identity(producers, output, where)
    op = producers.get(real)
    kind = {"arg_max": "argmax", "softmax": "softmax"}.get(op.type if op else "", "none")
    logits = _one(op, "X", where) if kind == "argmax" else real
    if kind == "softmax" and (_attr(op, "axis") is None or _attr(op, "axis").i not in (1, -3)):
        kind, logits = "none", real   # a softmax over another axis is not class probabilities
    if kind == "argmax" and (_attr(op, "axis") is None or _attr(op, "axis").l != 1):
        axis = "no axis" if _attr(op, "axis") is None else f"axis {_attr(op, 'axis').l}"
        raise ConverterError(f"{where}: its output is an argmax over {axis}, not over the classes (axis 1)")
    in_dims, _ = _dims(block, feeds[0])
    dims, dtype = _dims(block, logits)
    if not in_dims or len(in_dims) != 4 or in_dims[1] not in (3, -1):
        raise ConverterError(f"{where}: its input {feeds[0]!r} is {in_dims}, not an image batch [N, 3, H, W]")
    if not dims or len(dims) != 4:
        raise ConverterError(f"{where}: its class scores {logits!r} are {dims}, not [N, classes, H, W]")
    from converter.config_model import MAX_CLASSES

    if dims[1] > MAX_CLASSES:
        raise ConverterError(f"{where}: its class scores {logits!r} have {dims[1]} channels, more than the "
                             f"{MAX_CLASSES} classes an 8-bit class map holds")
    _, out_type = _dims(block, output)
    free = _free_name({v.name for v in block.vars})
    return {"input": feeds[0], "free_name": free, "input_dims": in_dims, "output": output, "output_op": kind,
            "logits": logits,
            "classes": dims[1] if dims[1] > 0 else None,
            "dtype": {2: "int32", 3: "int64"}.get(out_type, "int32") if kind == "argmax" else "int32"}


def with_argmax(desc, logits, name):
    """desc with an arg_max over axis 1 of `logits` (int32, named `name`) as
    its one output, in place of the output it had."""
    from paddle.base.proto import framework_pb2

    block = desc.blocks[0]
    op = framework_pb2.OpDesc()
    op.type = "arg_max"
    op.inputs.add(parameter="X", arguments=[logits])
    op.outputs.add(parameter="Out", arguments=[name])
    for attr, kind, field, value in (("axis", framework_pb2.LONG, "l", 1), ("dtype", framework_pb2.INT, "i", INT32),
                                     ("flatten", framework_pb2.BOOLEAN, "b", False),
                                     ("keepdims", framework_pb2.BOOLEAN, "b", False)):
        a = op.attrs.add(name=attr, type=kind)
        setattr(a, field, value)
    var = block.vars.add(name=name)
    var.type.type = framework_pb2.VarType.LOD_TENSOR
    var.type.lod_tensor.tensor.data_type = framework_pb2.VarType.INT32
    var.type.lod_tensor.tensor.dims.extend([-1, -1, -1])
    ops = list(block.ops)
    fetch_at = next(i for i, o in enumerate(ops) if o.type == "fetch")
    for slot in ops[fetch_at].inputs:
        slot.arguments[:] = [name]
    del block.ops[:]
    block.ops.extend(ops[:fetch_at] + [op] + ops[fetch_at:])
    return desc


FP32 = 5   # paddle's VarType for float32
# outputs that are statistics or shape bookkeeping, not activations
_BOOKKEEPING = {"SavedMean", "SavedVariance", "MeanOut", "VarianceOut", "ReserveSpace", "XShape"}


def activations(desc):
    """[(name, op type, [its input variables])] of the float32 activations
    the program computes, in the order its ops run (topological)."""
    block = desc.blocks[0]
    variables = {v.name: v for v in block.vars}
    out, seen = [], set()
    for op in block.ops:
        if op.type in ("feed", "fetch"):
            continue
        inputs = [a for v in op.inputs for a in v.arguments]
        for name in (a for v in op.outputs if v.parameter not in _BOOKKEEPING for a in v.arguments):
            var = variables.get(name)
            if (name in seen or var is None or var.persistable or not var.type.HasField("lod_tensor")
                    or var.type.lod_tensor.tensor.data_type != FP32):
                continue
            seen.add(name)
            out.append((name, op.type, inputs))
    return out


def bias_adds(desc):
    """{conv output: the output of the Add of its bias}: converters fold a
    conv's bias into the conv, whose output then carries the conv's name but
    the Add's value."""
    block = desc.blocks[0]
    constant = {v.name for v in block.vars if v.persistable}
    for op in block.ops:   # a parameter reshaped to broadcast is still a constant
        if op.type in ("reshape2", "unsqueeze2", "squeeze2") and _io(op, "X") and _io(op, "X")[0] in constant:
            constant.update(_io(op, "Out", "outputs"))
    convs = {a for op in block.ops if op.type in ("conv2d", "depthwise_conv2d")
             for v in op.outputs for a in v.arguments}
    out = {}
    for op in block.ops:
        if op.type != "elementwise_add":
            continue
        x, y = _io(op, "X"), _io(op, "Y")
        outs = _io(op, "Out", "outputs")
        if x and y and outs and x[0] in convs and y[0] in constant:
            out[x[0]] = outs[0]
    return out


def with_static_input(desc, shape, where):
    """desc's bytes with its one input fixed to `shape` and every variable's
    shape inferred from it, op by op, by Paddle's own InferShape.

    PaddleSeg exports a dynamic [-1, 3, -1, -1] input; paddle2onnx then maps
    an adaptive pool with no input size (PP-LiteSeg: AveragePool with strides
    0, Paddle2ONNX#1139), and the ONNX fails shape inference. The converted
    model has a static shape anyway, so paddle2onnx can be given one."""
    from converter.util.paddle_env import import_paddle

    paddle = import_paddle()
    feeds = [_one(op, "Out", where, "outputs") for op in desc.blocks[0].ops if op.type == "feed"]
    paddle.enable_static()
    try:
        program = paddle.static.Program.parse_from_string(desc.SerializeToString())
        block = program.global_block()
        block.var(feeds[0]).desc.set_shape(list(shape))
        for op in block.ops:
            if op.type in ("feed", "fetch"):
                continue
            try:
                op.desc.infer_shape(block.desc)
            except Exception as exc:   # Paddle raises its own types for a shape it cannot infer
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ConverterError(f"{where}: Paddle cannot infer the shapes of its {op.type!r} op at the static "
                                     f"input {list(shape)}: {first[:200]}") from None
        return program.desc.serialize_to_string()
    finally:
        paddle.disable_static()
