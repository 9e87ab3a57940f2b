"""What safe_pickle lets a parameter file build: the globals it knows by name,
and exactly the REDUCE and BUILD forms numpy and paddle write with them.

Nothing here is ever called with the file's arguments: each known global is
a name, and its arguments and state are checked against the one form a
state dict of numeric arrays uses, then turned into a plain value here (a
dict, a tuple, bytes, or an array over bytes already read).
"""
import numpy as np

from converter.errors import CheckpointError, UnsafeCheckpointError

MAX_NDIM = 16
# Dtypes a parameter file may hold: numpy's numeric descriptors.
NUMERIC = {"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"}
_RECONSTRUCT = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}
_TUPLE = {("builtins", "tuple"), ("__builtin__", "tuple")}
_BYTES = {("builtins", "bytes"), ("__builtin__", "bytes")}
KNOWN = _RECONSTRUCT | _TUPLE | _BYTES | {("numpy", "ndarray"), ("numpy", "dtype"),
                                         ("collections", "OrderedDict"), ("_codecs", "encode")}


def bad(msg):
    return CheckpointError(f"not a readable .pdparams file ({msg})")


def _unsafe(msg):
    return UnsafeCheckpointError(f"refusing to load checkpoint: {msg}")


class Global:
    """A known global, as a name only."""
    __slots__ = ("module", "name")

    def __init__(self, module, name):
        self.module, self.name = module, name

    def key(self):
        return (self.module, self.name)


class DType:
    """numpy.dtype(descr, False, True), waiting for its BUILD state."""
    __slots__ = ("descr", "order", "built")

    def __init__(self, descr):
        self.descr, self.order, self.built = descr, "=", False

    def dtype(self):
        dt = np.dtype(self.descr)
        return dt.newbyteorder(self.order) if self.order in "<>" else dt


class Array:
    """numpy.core.multiarray._reconstruct(ndarray, (0,), b'b'), waiting for its state."""
    __slots__ = ("value",)

    def __init__(self):
        self.value = None


def reduce(reader, func, args):
    """The value REDUCE of func(*args) stands for; reader.container registers
    new containers for the depth and cycle checks."""
    if not isinstance(func, Global) or not isinstance(args, tuple):
        raise _unsafe("REDUCE on something that is not a known global with a tuple of arguments")
    key = func.key()
    if key == ("collections", "OrderedDict") and args == ():
        return reader.container({})
    if key in _TUPLE and len(args) == 1 and isinstance(args[0], (tuple, list)):
        return reader.container(tuple(args[0]), args[0])
    if key in _BYTES and args == ():
        return b""  # protocol 2 writes empty bytes this way
    if key == ("_codecs", "encode") and len(args) == 2 and isinstance(args[0], str) \
            and args[1] in ("latin1", "latin-1"):
        try:
            return args[0].encode("latin1")  # protocol 2's form of raw bytes
        except UnicodeEncodeError:
            raise bad("latin1 text with characters above 255") from None
    if key == ("numpy", "dtype") and len(args) == 3 and isinstance(args[0], str) \
            and args[1] in (0, False) and args[2] in (1, True):
        if args[0] not in NUMERIC:
            raise _unsafe(f"dtype '{args[0]}' is not a plain numeric type")
        return DType(args[0])
    if key in _RECONSTRUCT and len(args) == 3 and isinstance(args[0], Global) \
            and args[0].key() == ("numpy", "ndarray") and args[1] == (0,) and args[2] in (b"b", "b"):
        return Array()
    raise _unsafe(f"{func.module}.{func.name} called with arguments a parameter file never uses")


def build(obj, state):
    """BUILD: only a dtype's or an array's state, each once."""
    if isinstance(obj, DType) and not obj.built:
        return _build_dtype(obj, state)
    if isinstance(obj, Array) and obj.value is None:
        return _build_array(obj, state)
    raise _unsafe(f"BUILD sets state on a {type(obj).__name__}, which a parameter file never does")


def _build_dtype(obj, state):
    # numpy writes (3, byteorder, None, None, None, -1, -1, 0) for every
    # plain numeric dtype; anything else (fields, subarrays, itemsize, flags
    # such as the object-reference bits) is a forged dtype.
    if not (isinstance(state, tuple) and len(state) == 8 and state[0] == 3 and state[1] in ("<", ">", "|", "=")
            and state[2:5] == (None, None, None) and state[5:] == (-1, -1, 0)
            and all(type(v) is int for v in (state[0], *state[5:]))):
        raise _unsafe(f"dtype '{obj.descr}' with a forged state {str(state)[:80]}")
    obj.order, obj.built = state[1], True


def _build_array(obj, state):
    if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1):
        raise _unsafe("array state is not (1, shape, dtype, fortran, bytes)")
    _, shape, dtype, fortran, raw = state
    if not isinstance(dtype, DType) or not dtype.built:
        raise _unsafe("array dtype is not a plain numeric dtype")
    if isinstance(raw, list):
        raise _unsafe("object array (its elements would be Python objects)")
    if not isinstance(raw, (bytes, memoryview)) or not isinstance(fortran, bool):
        raise bad("array data is not raw bytes")
    if not (isinstance(shape, tuple) and len(shape) <= MAX_NDIM and all(type(d) is int and d >= 0 for d in shape)):
        raise bad(f"array shape {str(shape)[:60]} is not a tuple of non-negative integers")
    dt = dtype.dtype()
    count = 1
    for d in shape:
        count *= d
    # Checked before anything is allocated: the bytes are already in memory.
    if count * dt.itemsize != len(raw):
        raise bad(f"array of shape {list(shape)} {dt.name} needs {count * dt.itemsize} bytes, "
                  f"the file holds {len(raw)}")
    obj.value = np.frombuffer(raw, dtype=dt, count=count).reshape(shape, order="F" if fortran else "C")


def resolve(obj):
    """Array placeholders -> arrays, one level (what a state dict holds)."""
    if isinstance(obj, Array):
        if obj.value is None:
            raise bad("an array without its data")
        return obj.value
    if isinstance(obj, tuple):
        return tuple(resolve(v) if isinstance(v, Array) else v for v in obj)
    return obj
