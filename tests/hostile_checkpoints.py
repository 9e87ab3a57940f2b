"""A corpus of hostile .pdparams files, written opcode by opcode.

`python tests/hostile_checkpoints.py DIR` writes every case into DIR; the
tests import CASES. Each case is (name, bytes, exit code the CLI must give:
7 for an unsafe checkpoint, 6 for one that cannot be read). The files are
built here from pickle opcodes, so what each one does can be read below.
"""
import pickle
import struct
import sys

import numpy as np

P4 = b"\x80\x04"


def u(text):
    """SHORT_BINUNICODE, or BINUNICODE for long text."""
    raw = text.encode()
    return (b"\x8c" + bytes([len(raw)]) if len(raw) < 256 else b"X" + struct.pack("<I", len(raw))) + raw


def glob(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def sglob(module, name):
    return u(module) + u(name) + b"\x93"


def i1(n):
    return b"K" + bytes([n])


def i4(n):
    return b"J" + struct.pack("<i", n)


def wrap(value_ops, key="backbone.conv_layer1_1._conv.weight"):
    """{key: <value>} as an OrderedDict, like paddle.save writes."""
    return P4 + glob("collections", "OrderedDict") + b")R(" + u(key) + value_ops + b"u."


def dtype(descr, state_ops=None):
    state = state_ops if state_ops is not None else b"(" + i1(3) + u("<") + b"NNN" + i4(-1) + i4(-1) + i1(0) + b"t"
    return glob("numpy", "dtype") + u(descr) + b"\x89\x88\x87R" + state + b"b"


def array(shape, descr, raw_ops, dtype_ops=None):
    shape_ops = b"(" + b"".join(b"\x8a\x08" + struct.pack("<q", d) for d in shape) + b"t"
    return (glob("numpy.core.multiarray", "_reconstruct") + glob("numpy", "ndarray") + i1(0) + b"\x85"
            + b"C\x01b" + b"\x87R" + b"(" + i1(1) + shape_ops + (dtype_ops or dtype(descr)) + b"\x89" + raw_ops
            + b"tb")


def binbytes(data):
    return b"B" + struct.pack("<I", len(data)) + data


def good_checkpoint():
    return pickle.dumps({"a": np.arange(12, dtype=np.float32).reshape(3, 4)}, protocol=4)


def _nested_lists(n):
    return P4 + b"]" * n + b"a" * (n - 1) + b"."


def _cases():
    valid = good_checkpoint()
    yield "os_system_global", wrap(glob("os", "system") + u("touch pwned") + b"\x85R"), 7
    yield "posix_system_stack_global", wrap(sglob("posix", "system") + u("id") + b"\x85R"), 7
    yield "builtins_eval", wrap(glob("builtins", "eval") + u("__import__('os')") + b"\x85R"), 7
    yield "builtins_exec_stack_global", wrap(sglob("builtins", "exec") + u("print(1)") + b"\x85R"), 7
    yield "subprocess_popen", wrap(glob("subprocess", "Popen") + u("id") + b"\x85R"), 7
    yield "inst_opcode", wrap(b"(" + u("id") + b"ios\nsystem\n"), 7
    yield "obj_opcode", wrap(b"(" + glob("os", "system") + u("id") + b"o"), 7
    yield "newobj_opcode", wrap(glob("collections", "OrderedDict") + b")\x81"), 7
    yield "persid", wrap(b"Pabc\n"), 7
    yield "binpersid", wrap(u("abc") + b"Q"), 7
    yield "ext1", wrap(b"\x82\x01"), 7
    yield "ext2", wrap(b"\x83\x01\x00"), 7
    yield "ext4", wrap(b"\x84\x01\x00\x00\x00"), 7
    # The reported segfault: an object dtype whose state strips its flags,
    # then numpy.core.multiarray.scalar reading 8 file bytes as a PyObject*.
    forged = b"(" + i1(3) + u("|") + b"NNN" + i4(-1) + i4(-1) + i1(0) + b"t"
    yield "object_scalar_pointer", wrap(glob("numpy.core.multiarray", "scalar") + dtype("O", forged)
                                        + b"C\x08" + b"A" * 8 + b"\x86R"), 7
    yield "object_dtype", wrap(dtype("O")), 7
    yield "void_dtype", wrap(array((2,), "V8", binbytes(b"\0" * 16))), 7
    yield "structured_dtype_state", wrap(array((1,), "f4", binbytes(b"\0" * 4), dtype(
        "f4", b"(" + i1(3) + u("<") + b"N" + u("a") + b"\x85" + b"N" + i4(4) + i4(1) + i1(0) + b"t"))), 7
    yield "dtype_flags_forged", wrap(array((1,), "f4", binbytes(b"\0" * 4), dtype(
        "f4", b"(" + i1(3) + u("<") + b"NNN" + i4(-1) + i4(-1) + i1(63) + b"t"))), 7
    yield "dtype_itemsize_forged", wrap(array((1,), "f4", binbytes(b"\0" * 4), dtype(
        "f4", b"(" + i1(3) + u("<") + b"NNN" + i4(64) + i4(-1) + i1(0) + b"t"))), 7
    yield "object_array_list_data", wrap(array((2,), "f4", b"(" + u("x") + u("y") + b"l")), 7
    yield "ndarray_subclass", wrap(glob("numpy.core.multiarray", "_reconstruct") + glob("numpy", "matrix")
                                   + i1(0) + b"\x85C\x01b\x87R"), 7
    yield "codecs_other_encoding", wrap(glob("_codecs", "encode") + u("x") + u("rot13") + b"\x86R"), 7
    yield "ordereddict_items_attribute", P4 + glob("collections", "OrderedDict") + b")R" \
        + b"}" + u("items") + glob("builtins", "tuple") + b"s" + b"b.", 7
    yield "build_on_dict", P4 + b"}" + b"}" + u("x") + i1(1) + b"sb.", 7
    # _reconstruct(ndarray, (2**29,), 'O'): numpy allocates the 4.3 GB object array at once.
    yield "reconstruct_huge_object_array", wrap(glob("numpy.core.multiarray", "_reconstruct")
                                                + glob("numpy", "ndarray") + b"\x8a\x04" + struct.pack("<i", 2 ** 29)
                                                + b"\x85" + u("O") + b"\x87R"), 7
    # Declared 2**29 float32 elements, 8 bytes present.: 2**29 declared elements, 8 present.
    yield "huge_declared_shape", wrap(array((2 ** 29,), "f4", binbytes(b"\0" * 8))), 6
    yield "huge_shape_overflow", wrap(array((2 ** 62, 2 ** 62), "f8", binbytes(b"\0" * 8))), 6
    yield "negative_shape", wrap(array((-1, 4), "f4", binbytes(b"\0" * 16))), 6
    yield "huge_binbytes8_length", wrap(b"\x8e" + struct.pack("<Q", 2 ** 62) + b"\0" * 8), 6
    yield "huge_binunicode8_length", wrap(b"\x8d" + struct.pack("<Q", 2 ** 40) + b"abc"), 6
    yield "deep_nesting", _nested_lists(5000), 6
    yield "recursive_list", P4 + b"]\x94h\x00a.", 7
    # L1.append(L0), then L0.append(L1): a cycle through two lists.
    yield "mutual_recursion", P4 + b"]\x94]\x94h\x00a0h\x01a.", 7
    yield "too_many_objects", P4 + b"(" + b")" * 1_200_000 + b"l.", 6
    yield "long4_huge_int", wrap(b"\x8b" + struct.pack("<i", 1 << 30) + b"\0" * 16), 6
    yield "long1_wide_int", wrap(b"\x8a\x40" + b"\xff" * 64), 6
    yield "unknown_opcode", wrap(b"\xff"), 6
    yield "bytearray8_protocol5", wrap(b"\x96" + struct.pack("<Q", 4) + b"abcd"), 6
    yield "undefined_memo", wrap(b"h\x07"), 6
    yield "stack_global_not_strings", wrap(i1(1) + i1(2) + b"\x93"), 6
    yield "stack_underflow", P4 + b"R.", 6
    yield "list_root", P4 + b"]" + i1(1) + b"a.", 6
    yield "array_root", P4 + array((1,), "f4", binbytes(b"\0" * 4)) + b".", 6
    yield "empty_file", b"", 6
    yield "garbage", b"\x00\x01not a pickle at all" * 3, 6
    yield "no_stop", valid[:-1], 6
    for frac in (0.1, 0.5, 0.9):
        yield f"truncated_{int(frac * 100)}pct", valid[: int(len(valid) * frac)], 6


CASES = list(_cases())


def main(folder):
    import os

    os.makedirs(folder, exist_ok=True)
    for name, data, _ in CASES:
        with open(os.path.join(folder, name + ".pdparams"), "wb") as fh:
            fh.write(data)
    print(f"wrote {len(CASES)} hostile checkpoints to {folder}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "hostile-checkpoints")
