"""A Paddle 3 PIR inference program (model.json / inference.json), read in Python.

Paddle 3 (`paddle.jit.save`, PaddleSeg's and PaddleX's exporters) writes the
program as JSON: program.regions[0].blocks[0].ops, each op an object whose
"#" is "<dialect id>.<op>" (1 is pd_op, Paddle's schema.cc DialectIdMap) or
"p" for a parameter, with "I"/"O" the value ids it reads and writes ("%"),
"A" its attributes and "TT" each value's type (dtype, dims). This module
reads it with the standard library only: what it is (input, output op,
classes, parameters) is checked here, before any Paddle sees the file, and
a copy with more `fetch` ops (the logits, diagnose's taps) is written from
it, as runners.paddle_program does for the legacy ProgramDesc.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

from converter.errors import ConverterError, StageError

# W48's program is 1.2 MB (its weights are in .pdiparams); parsed, JSON takes
# about ten times its size in Python objects
MAX_PROGRAM_BYTES = 64 << 20
DIALECTS = {"0": "builtin", "1": "pd_op", "2": "cf", "3": "custom_op", "4": "pd_dist"}
PROGRAM_NAMES = ("model.json", "inference.json")
# control flow, whose blocks paddle2onnx 2.x converts only in part; refused by name
CONTROL_FLOW = ("pd_op.if", "pd_op.while", "pd_op.pylayer", "cf.yield", "cf.tuple_push", "cf.tuple_pop")
ITEM_BYTES = {"bool": 1, "i8": 1, "ui8": 1, "i16": 2, "f16": 2, "bf16": 2, "i32": 4, "f32": 4, "i64": 8, "f64": 8}


def pir_program(folder: str) -> str | None:
    """The PIR program of an inference-model folder, if that is what it holds (and no .pdmodel)."""
    if os.path.isfile(os.path.join(folder, "model.pdmodel")):
        return None
    for name in PROGRAM_NAMES:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return None


def read_pir(path: str) -> dict:
    """The parsed program; a StageError naming the file for anything that is not one."""
    from converter.runners.paddle_program import program_bytes

    data = program_bytes(path, MAX_PROGRAM_BYTES, "Paddle PIR program")
    try:
        program = json.loads(data)
    except RecursionError:
        raise StageError(f"{path}: nests too deep for a PIR program") from None
    except ValueError as exc:
        raise StageError(f"{path}: not a PIR program (invalid JSON: {str(exc)[:80]})") from None
    if not (isinstance(program, dict) and isinstance(program.get("base_code"), dict)
            and program["base_code"].get("magic") == "pir" and _ops_or_none(program) is not None):
        raise StageError(f"{path}: not a Paddle PIR program (no base_code magic 'pir' or no program block)")
    return program


def _ops_or_none(program):
    try:
        ops = program["program"]["regions"][0]["blocks"][0]["ops"]
    except (KeyError, IndexError, TypeError):
        return None
    return ops if isinstance(ops, list) and all(isinstance(op, dict) for op in ops) else None


def ops(program: dict) -> list[dict]:
    return program["program"]["regions"][0]["blocks"][0]["ops"]


def op_name(op: dict) -> str:
    raw = str(op.get("#", ""))
    if raw == "p":
        return "builtin.parameter"
    dialect, _, name = raw.partition(".")
    return f"{DIALECTS.get(dialect, dialect)}.{name}"


def outputs(op: dict) -> list[dict]:
    found = op.get("O", [])
    found = found if isinstance(found, list) else [found]
    return [o for o in found if isinstance(o, dict)]


def _id(value: Any) -> Any:
    """A value id as a key: paddle writes ints; anything unhashable is no id."""
    return value if isinstance(value, (int, str)) else None


def inputs(op: dict) -> list[Any]:
    found = op.get("I", [])
    return [_id(i.get("%")) for i in found if isinstance(i, dict)] if isinstance(found, list) else []


def attr(op: dict, name: str) -> Any:
    """An attribute's value (None when absent); a parameter's only attribute is its name."""
    if op.get("#") == "p":
        found = op.get("A")
        return found[-1] if name == "name" and isinstance(found, list) and found else None
    for a in _attributes(op):
        if a.get("N") == name:
            return a["AT"].get("D")
    return None


def _attributes(op: dict) -> list[dict]:
    """An op's well-formed attributes ({"N": name, "AT": {"#": type, "D": value}})."""
    found = op.get("A")
    if not isinstance(found, list):
        return []
    return [a for a in found if isinstance(a, dict) and isinstance(a.get("AT"), dict)]


def _set_attribute(op: dict, name: str, value: Any) -> None:
    for a in _attributes(op):
        if a.get("N") == name:
            a["AT"]["D"] = value


def value_type(value: dict) -> tuple[str | None, list[int] | None]:
    """(dtype, dims) of an op's output value: ("f32", [-1, 19, -1, -1])."""
    found = value.get("TT")
    tt: dict = found if isinstance(found, dict) else {}
    d: list = tt["D"] if isinstance(tt.get("D"), list) else []
    if tt.get("#") != "0.t_dtensor" or len(d) < 2 or not isinstance(d[0], dict):
        return None, None
    dtype = str(d[0].get("#", "")).rpartition(".t_")[2] or None
    dims = d[1] if isinstance(d[1], list) and all(type(v) is int for v in d[1]) else None
    return dtype, dims


def _values(block_ops):
    """{value id: (the op that writes it, the value)}."""
    return {_id(o.get("%")): (op, o) for op in block_ops for o in outputs(op) if _id(o.get("%")) is not None}


def _single(block_ops, name, where):
    found = [op for op in block_ops if op_name(op) == name]
    if len(found) != 1:
        what = "input (pd_op.data)" if name == "pd_op.data" else "output (pd_op.fetch)"
        raise ConverterError(f"{where}: expected one {what}, found {len(found)}")
    return found[0]


def refuse_control_flow(block_ops: list[dict], where: str) -> None:
    for op in block_ops:
        if op_name(op) in CONTROL_FLOW or op.get("regions"):
            raise ConverterError(f"{where}: holds control flow ({op_name(op)}), which this converter refuses: "
                                 "paddle2onnx 2.x converts such blocks only in part")


def _argmax_axis(values, op, where):
    """The axis of a pd_op.argmax: its second input, a pd_op.full constant."""
    ids = inputs(op)
    source = values.get(ids[1])[0] if len(ids) > 1 and ids[1] in values else None
    if source is None or op_name(source) != "pd_op.full" or not isinstance(attr(source, "value"), (int, float)):
        raise ConverterError(f"{where}: its output is an argmax whose axis is not a constant")
    return int(attr(source, "value"))


def _output_op(values, fetched, where):
    """(output op, the class-score value id, argmax keepdims) of the fetched value."""
    producer = values.get(fetched, (None, None))[0]
    name = op_name(producer) if producer else ""
    if name == "pd_op.argmax":
        axis = _argmax_axis(values, producer, where)
        if axis not in (1, -3):
            raise ConverterError(f"{where}: its output is an argmax over axis {axis}, not over the classes (axis 1)")
        return "argmax", inputs(producer)[0], bool(attr(producer, "keepdims"))
    if name == "pd_op.softmax" and attr(producer, "axis") in (1, -3):
        return "softmax", fetched, False
    return "none", fetched, False


def describe_pir(program: dict, where: str) -> dict:
    """{input, input_dims, output, output_op, logits, classes, dtype, keepdims} of a
    one-input, one-output segmentation program, as paddle_program.describe;
    `logits` is a value id, `output` the fetch's name (paddle2onnx 2.x names the
    ONNX output after it)."""
    from converter.config_model import MAX_CLASSES

    block_ops = ops(program)
    refuse_control_flow(block_ops, where)
    values = _values(block_ops)
    feed, fetch = _single(block_ops, "pd_op.data", where), _single(block_ops, "pd_op.fetch", where)
    fetched = (inputs(fetch) or [None])[0]
    if fetched not in values or not outputs(feed) or not outputs(fetch):
        raise ConverterError(f"{where}: its pd_op.fetch reads no value the program writes (not a program paddle "
                             "writes)")
    kind, logits, keepdims = _output_op(values, fetched, where)
    _, in_dims = value_type(outputs(feed)[0])
    _, dims = value_type(values[logits][1]) if logits in values else (None, None)
    if not in_dims or len(in_dims) != 4 or in_dims[1] not in (3, -1):
        raise ConverterError(f"{where}: its input {attr(feed, 'name')!r} is {in_dims}, not an image batch "
                             "[N, 3, H, W]")
    if not dims or len(dims) != 4:
        raise ConverterError(f"{where}: its class scores are {dims}, not [N, classes, H, W]")
    if dims[1] > MAX_CLASSES:
        raise ConverterError(f"{where}: its class scores have {dims[1]} channels, more than the {MAX_CLASSES} "
                             "classes an 8-bit class map holds")
    out_dtype, _ = value_type(values[fetched][1])
    return {"input": str(attr(feed, "name")), "input_dims": in_dims, "output": str(attr(fetch, "name")),
            "output_op": kind, "logits": logits, "classes": dims[1] if dims[1] > 0 else None,
            "keepdims": keepdims,
            "dtype": {"i64": "int64"}.get(out_dtype or "", "int32") if kind == "argmax" else "int32"}


def parameters(program: dict) -> list[tuple[str, list[int], str]]:
    """(name, dims, dtype) of every parameter, in program order."""
    found = []
    for op in ops(program):
        if op.get("#") == "p" and outputs(op):
            dtype, dims = value_type(outputs(op)[0])
            found.append((str(attr(op, "name")), dims or [], dtype or "f32"))
    return found


def parameter_count(program: dict) -> int:
    return sum(math.prod(dims) for _, dims, _ in parameters(program) if all(d > 0 for d in dims))


def check_parameters_file(program: dict, params_path: str) -> None:
    """A .pdiparams smaller than the program's parameters is cut short (or another model's)."""
    need = sum(math.prod(dims) * ITEM_BYTES.get(dtype, 4) for _, dims, dtype in parameters(program)
               if all(d > 0 for d in dims))
    have = os.path.getsize(params_path)
    if have < need:
        raise StageError(f"{params_path}: {have} bytes, but the program's parameters need at least {need} "
                         "(a truncated or foreign .pdiparams)")


def with_fetches(program: dict, value_ids: list[Any], names: list[str]) -> dict:
    """A copy of program with one more pd_op.fetch per value, named as given
    (Paddle Inference returns them under those names)."""
    import copy

    out = copy.deepcopy(program)
    block_ops = ops(out)
    values = _values(block_ops)
    fetches = [op for op in block_ops if op_name(op) == "pd_op.fetch"]
    next_id = max([v for v in values if type(v) is int] + [0]) + 1
    for number, (value_id, name) in enumerate(zip(value_ids, names)):
        fetch = copy.deepcopy(fetches[-1])
        fetch["A"] = [{"AT": {"#": "0.a_str", "D": name}, "N": "name"},
                      {"AT": {"#": "0.a_i32", "D": len(fetches) + number}, "N": "col"}]
        fetch["I"] = [{"%": value_id}]
        written = copy.deepcopy(values[value_id][1])
        written["%"] = next_id + number
        fetch["O"] = [written]
        block_ops.append(fetch)
    return out


def _tensor_type(dtype: str, dims: list[int]) -> dict:
    return {"#": "0.t_dtensor", "D": [{"#": f"0.t_{dtype}"}, list(dims), "NCHW", [], 0]}


def _flag(name: str, value: bool) -> dict:
    return {"AT": {"#": "0.a_array", "D": [{"#": "0.a_bool", "D": value}]}, "N": name}


def _argmax_ops(logits: Any, dims: list[int], first_id: int) -> list[dict]:
    """pd_op.full (the axis, 1) and pd_op.argmax over it, int32, no kept dim, as paddle writes them."""
    axis = {"#": "1.full", "A": [{"AT": {"#": "1.a_intarray", "D": [1]}, "N": "shape"},
                                 {"AT": {"#": "0.a_f64", "D": 1.0}, "N": "value"},
                                 {"AT": {"#": "1.a_dtype", "D": "int64"}, "N": "dtype"},
                                 {"AT": {"#": "1.a_place", "D": [1, 0, ""]}, "N": "place"}],
            "I": [], "O": [{"%": first_id, "TT": _tensor_type("i64", [1])}], "OA": [_flag("stop_gradient", True)]}
    argmax = {"#": "1.argmax", "A": [{"AT": {"#": "0.a_bool", "D": False}, "N": "keepdims"},
                                     {"AT": {"#": "0.a_bool", "D": False}, "N": "flatten"},
                                     {"AT": {"#": "1.a_dtype", "D": "int32"}, "N": "dtype"}],
              "I": [{"%": logits}, {"%": first_id}],
              "O": [{"%": first_id + 1, "TT": _tensor_type("i32", [dims[0], dims[2], dims[3]])}],
              "OA": [_flag("stop_gradient", False)]}
    return [axis, argmax]


def with_class_map_output(program: dict, found: dict) -> tuple[dict | None, str]:
    """(a copy of program whose one output is the class map, int32 [N, H, W],
    or None when it is that already; what was changed). found: describe_pir's."""
    import copy

    if found["output_op"] == "argmax" and not found["keepdims"]:
        return None, "none"
    out = copy.deepcopy(program)
    block_ops = ops(out)
    values = _values(block_ops)
    fetch = next(op for op in block_ops if op_name(op) == "pd_op.fetch")
    _, dims = value_type(values[found["logits"]][1])
    assert dims is not None   # describe_pir checked: [N, classes, H, W]
    class_map = _tensor_type("i32", [dims[0], dims[2], dims[3]])
    if found["output_op"] == "argmax":
        argmax = values[inputs(fetch)[0]][0]
        _set_attribute(argmax, "keepdims", False)
        outputs(argmax)[0]["TT"] = copy.deepcopy(class_map)
        change = "the argmax's kept class axis dropped"
    else:
        added = _argmax_ops(found["logits"], dims, max(v for v in values if type(v) is int) + 1)
        at = block_ops.index(fetch)
        block_ops[at:at] = added
        fetch["I"] = [{"%": outputs(added[1])[0]["%"]}]
        change = "argmax over axis 1 of the class scores appended"
    outputs(fetch)[0]["TT"] = class_map
    return out, change


def with_static_input(program: dict, shape: list[int]) -> dict:
    """A copy whose pd_op.data takes exactly `shape` (the config's static
    input): what paddle2onnx then infers is static too."""
    import copy

    out = copy.deepcopy(program)
    feed = next(op for op in ops(out) if op_name(op) == "pd_op.data")
    _set_attribute(feed, "shape", list(shape))
    value = outputs(feed)[0]
    dtype, _ = value_type(value)
    value["TT"] = _tensor_type(dtype or "f32", list(shape))
    return out


def converted_names(program: dict) -> dict[Any, str]:
    """{value id: the name paddle2onnx 2.x gives it in the ONNX graph}:
    p2o.<op>.<how many such ops came before>.<output index> for an op's
    outputs (e.g. p2o.pd_op.add.13.0), a parameter's own name for a
    parameter. Diagnose compares the two sides under these names."""
    import collections

    counts: collections.Counter = collections.Counter()
    names = {}
    for op in ops(program):
        name = op_name(op)
        for index, o in enumerate(outputs(op)):
            if _id(o.get("%")) is not None:
                names[_id(o.get("%"))] = (str(attr(op, "name")) if name == "builtin.parameter"
                                          else f"p2o.{name}.{counts[name]}.{index}")
        counts[name] += name != "builtin.parameter"
    return names


def activations(program: dict) -> list[tuple[str, str, list[str]]]:
    """[(name, op, [its inputs' names])] of the float32 activations the
    program computes, in program order, named as in the ONNX graph
    (paddle_program.activations for the legacy format)."""
    names = converted_names(program)
    folded = _folded_depthwise(program)
    out = []
    for op in ops(program):
        name = op_name(op)
        if name in ("builtin.parameter", "pd_op.data", "pd_op.fetch") or name.startswith("builtin."):
            continue
        if not inputs(op):
            # a constant (pd_op.full, ...): Paddle 3 Inference folds it away and
            # cannot fetch it ("scope->FindVar(name) should not be null", SegFormer)
            continue
        sources = [names[i] for i in inputs(op) if i in names]
        for o in outputs(op):
            dtype, dims = value_type(o)
            if dtype == "f32" and dims and _id(o.get("%")) in names and _id(o.get("%")) not in folded:
                out.append((names[_id(o.get("%"))], name.partition(".")[2], sources))
    return out


def _folded_depthwise(program: dict) -> set[Any]:
    """Depthwise convolutions read only by a batch_norm. OpenVINO folds the
    norm's scale into the GroupConvolution's weights, and the folded
    convolution keeps the first one's name: under that name the IR holds
    neither the convolution's value nor the norm's (measured on PP-LiteSeg:
    rel. error 0.09-0.3 against both), so diagnose does not compare it."""
    readers: dict[Any, list[str]] = {}
    for op in ops(program):
        for i in inputs(op):
            readers.setdefault(i, []).append(op_name(op))
    return {_id(o.get("%")) for op in ops(program) if op_name(op) == "pd_op.depthwise_conv2d"
            for o in outputs(op)
            if readers.get(_id(o.get("%"))) and set(readers[_id(o.get("%"))]) <= {"pd_op.batch_norm_",
                                                                              "pd_op.batch_norm"}}


CONVOLUTIONS = ("pd_op.conv2d", "pd_op.depthwise_conv2d")
BROADCASTS = ("pd_op.reshape", "pd_op.unsqueeze", "pd_op.squeeze")


def _is_constant(op: dict | None, values: dict) -> bool:
    """A parameter, or a parameter reshaped to broadcast."""
    if op is None:
        return False
    if op_name(op) in BROADCASTS:
        source = values.get((inputs(op) or [None])[0], (None, None))[0]
        return source is not None and op_name(source) == "builtin.parameter"
    return op_name(op) == "builtin.parameter"


def bias_adds(program: dict) -> dict[str, str]:
    """{conv output: the output of the add of its bias} (converters fold the
    bias into the conv, whose output then carries the add's value)."""
    names, values = converted_names(program), _values(ops(program))
    found = {}
    for op in ops(program):
        ids = inputs(op)
        if op_name(op) != "pd_op.add" or len(ids) != 2 or not outputs(op):
            continue
        first, second = (values.get(i, (None, None))[0] for i in ids)
        written = _id(outputs(op)[0].get("%"))
        if (first is not None and op_name(first) in CONVOLUTIONS and _is_constant(second, values)
                and ids[0] in names and written in names):
            found[names[ids[0]]] = names[written]
    return found


def with_taps(program: dict, taps: list[str]) -> dict:
    """A copy that also fetches each tap, a name of converted_names, under that name."""
    by_name = {name: value for value, name in converted_names(program).items()}
    missing = [t for t in taps if t not in by_name]
    if missing:
        raise StageError(f"not tensors of this PIR program: {', '.join(missing[:3])}")
    return with_fetches(program, [by_name[t] for t in taps], list(taps))
