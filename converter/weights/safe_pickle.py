"""A pickle reader for parameter files that cannot run code, by construction.

`pickle.Unpickler` with a restricted `find_class` still hands the real
numpy callables (`_reconstruct`, `dtype`, `scalar`) whatever arguments and
state the file gives them. A forged dtype state can strip the object flag
checks and make `scalar` read a pointer from the file, and an object array
of 2**29 elements is allocated before any check runs. So we do not unpickle:
this module interprets the opcodes itself. It knows a few globals only as
names (numpy's array and dtype reconstructors, OrderedDict, tuple, bytes and
`_codecs.encode`), checks every argument and state against the exact form
numpy and paddle write, and builds arrays with `np.frombuffer` over bytes
already read from the file. Nothing from the file is ever called.

Bounds: the input is a bytes object already in memory (the caller bounds its
size); every length is checked against the bytes left; the number of objects,
the container depth and integer sizes are capped; containers cannot be
mutated once they are inside another one, so no cycle can be built.
"""
import struct

import numpy as np

from converter.errors import CheckpointError, UnsafeCheckpointError

MAX_OBJECTS = 1_000_000   # a release-2.3 state dict needs ~20 per parameter (~2,000 parameters)
MAX_DEPTH = 32
MAX_NDIM = 16
# Dtypes a parameter file may hold: numpy's numeric descriptors.
NUMERIC = {"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"}

_RECONSTRUCT = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}
_KNOWN = _RECONSTRUCT | {("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
                         ("_codecs", "encode"), ("builtins", "tuple"), ("__builtin__", "tuple"),
                         ("builtins", "bytes"), ("__builtin__", "bytes")}
# Opcodes that name or call objects, or reach outside the file: never needed.
_UNSAFE_OPS = {b"i": "INST", b"o": "OBJ", b"\x81": "NEWOBJ", b"\x92": "NEWOBJ_EX", b"P": "PERSID",
               b"Q": "BINPERSID", b"\x82": "EXT1", b"\x83": "EXT2", b"\x84": "EXT4"}


class _Global:
    __slots__ = ("module", "name")

    def __init__(self, module, name):
        self.module, self.name = module, name

    def key(self):
        return (self.module, self.name)


class _DType:
    """numpy.dtype(descr, False, True), waiting for its BUILD state."""
    __slots__ = ("descr", "order", "built")

    def __init__(self, descr):
        self.descr, self.order, self.built = descr, "=", False

    def dtype(self):
        dt = np.dtype(self.descr)
        return dt.newbyteorder(self.order) if self.order in "<>" else dt


class _Array:
    """numpy.core.multiarray._reconstruct(ndarray, (0,), b'b'), waiting for its state."""
    __slots__ = ("value",)

    def __init__(self):
        self.value = None


class _Mark:
    __slots__ = ()


_MARK = _Mark()


def _bad(msg):
    return CheckpointError(f"not a readable .pdparams file ({msg})")


class _Reader:
    def __init__(self, data):
        self.view = memoryview(data)
        self.pos = 0
        self.stack = []
        self.memo = {}
        self.objects = 0
        self.depth = {}     # id(container) -> nesting depth
        self.frozen = set()  # ids of containers already placed inside another
        self.keep = []      # keeps every container alive, so ids stay unique

    # -- reading -------------------------------------------------------
    def take(self, n):
        if n < 0 or self.pos + n > len(self.view):
            raise _bad(f"truncated: {n} bytes wanted at offset {self.pos}, {len(self.view) - self.pos} left")
        chunk = self.view[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def uint(self, n):
        return int.from_bytes(self.take(n), "little")

    def line(self):
        end = bytes(self.view[self.pos:self.pos + 256]).find(b"\n")
        if end < 0:
            raise _bad(f"unterminated text argument at offset {self.pos}")
        text = bytes(self.take(end + 1)[:-1])
        try:
            return text.decode("ascii")
        except UnicodeDecodeError:
            raise _bad(f"non-ASCII text argument at offset {self.pos}") from None

    def text(self, n):
        try:
            return str(self.take(n), "utf-8")
        except UnicodeDecodeError:
            raise _bad(f"invalid UTF-8 string before offset {self.pos}") from None

    # -- objects -------------------------------------------------------
    def push(self, obj):
        self.objects += 1
        if self.objects > MAX_OBJECTS:
            raise _bad(f"more than {MAX_OBJECTS} objects")
        self.stack.append(obj)

    def pop(self):
        if not self.stack or self.stack[-1] is _MARK:
            raise _bad(f"stack underflow at offset {self.pos}")
        return self.stack.pop()

    def pop_mark(self):
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i] is _MARK:
                items = self.stack[i + 1:]
                del self.stack[i:]
                return items
        raise _bad(f"no MARK on the stack at offset {self.pos}")

    def container(self, obj, children=()):
        self.keep.append(obj)
        self.depth[id(obj)] = 0
        self.adopt(obj, children)
        return obj

    def adopt(self, parent, children):
        """Record that children now sit inside parent; bound depth, forbid cycles."""
        if id(parent) in self.frozen and not isinstance(parent, tuple):
            raise UnsafeCheckpointError("refusing to load checkpoint: it modifies a container after placing "
                                        "it inside another (a recursive structure)")
        depth = self.depth.get(id(parent), 0)
        for child in children:
            if child is parent:
                raise UnsafeCheckpointError("refusing to load checkpoint: a container contains itself")
            if id(child) in self.depth:
                self.frozen.add(id(child))
                depth = max(depth, self.depth[id(child)] + 1)
        if depth > MAX_DEPTH:
            raise _bad(f"nesting deeper than {MAX_DEPTH}")
        self.depth[id(parent)] = depth

    def target(self, kind):
        if not self.stack or not isinstance(self.stack[-1], kind):
            raise _bad(f"{'SETITEM' if kind is dict else 'APPEND'} on a {type(self.stack[-1]).__name__ if self.stack else 'empty stack'}")
        return self.stack[-1]

    def memo_get(self, idx):
        if idx not in self.memo:
            raise _bad(f"memo key {idx} not defined")
        self.push(self.memo[idx])

    def memo_put(self, idx):
        if not self.stack or self.stack[-1] is _MARK:
            raise _bad("memo store with an empty stack")
        if len(self.memo) >= MAX_OBJECTS:
            raise _bad("memo too large")
        self.memo[idx] = self.stack[-1]

    def set_items(self, d, items):
        if len(items) % 2:
            raise _bad("odd number of items for SETITEMS")
        for k, v in zip(items[::2], items[1::2]):
            if not isinstance(k, (str, int, bytes, bool, type(None))):
                raise _bad(f"dict key of type {type(k).__name__}")
            d[k] = v
        self.adopt(d, items[1::2])

    # -- globals, REDUCE, BUILD ----------------------------------------
    def global_(self, module, name):
        if (module, name) not in _KNOWN:
            raise UnsafeCheckpointError(
                f"refusing to load checkpoint: it references {module}.{name}, "
                "which a parameter file never needs (possibly malicious)")
        self.push(_Global(module, name))

    def reduce(self):
        args = self.pop()
        func = self.pop()
        if not isinstance(func, _Global) or not isinstance(args, tuple):
            raise UnsafeCheckpointError("refusing to load checkpoint: REDUCE on something that is not a "
                                        "known global with a tuple of arguments")
        key = func.key()
        if key == ("collections", "OrderedDict") and args == ():
            return self.push(self.container({}))
        if key in (("builtins", "tuple"), ("__builtin__", "tuple")) and len(args) == 1 \
                and isinstance(args[0], (tuple, list)):
            return self.push(self.container(tuple(args[0]), args[0]))
        if key in (("builtins", "bytes"), ("__builtin__", "bytes")) and args == ():
            return self.push(b"")  # protocol 2 writes empty bytes this way
        if key == ("_codecs", "encode") and len(args) == 2 and isinstance(args[0], str) \
                and args[1] in ("latin1", "latin-1"):
            try:
                return self.push(args[0].encode("latin1"))
            except UnicodeEncodeError:
                raise _bad("latin1 text with characters above 255") from None
        if key == ("numpy", "dtype") and len(args) == 3 and isinstance(args[0], str) \
                and args[1] in (0, False) and args[2] in (1, True):
            if args[0] not in NUMERIC:
                raise UnsafeCheckpointError(f"refusing to load checkpoint: dtype '{args[0]}' is not a "
                                            "plain numeric type")
            return self.push(_DType(args[0]))
        if key in _RECONSTRUCT and len(args) == 3 and isinstance(args[0], _Global) \
                and args[0].key() == ("numpy", "ndarray") and args[1] == (0,) and args[2] in (b"b", "b"):
            return self.push(_Array())
        raise UnsafeCheckpointError(f"refusing to load checkpoint: {func.module}.{func.name} called with "
                                    "arguments a parameter file never uses")

    def build(self):
        state = self.pop()
        obj = self.stack[-1] if self.stack else None
        if isinstance(obj, _DType) and not obj.built:
            return self._build_dtype(obj, state)
        if isinstance(obj, _Array) and obj.value is None:
            return self._build_array(obj, state)
        raise UnsafeCheckpointError(f"refusing to load checkpoint: BUILD sets state on a "
                                    f"{type(obj).__name__.lstrip('_')}, which a parameter file never does")

    @staticmethod
    def _build_dtype(obj, state):
        # numpy writes (3, byteorder, None, None, None, -1, -1, 0) for every
        # plain numeric dtype; anything else (fields, subarrays, itemsize,
        # flags such as the object-reference bits) is a forged dtype.
        if not (isinstance(state, tuple) and len(state) == 8 and state[0] == 3 and state[1] in ("<", ">", "|", "=")
                and state[2:5] == (None, None, None) and state[5:] == (-1, -1, 0)
                and all(type(v) is int for v in (state[0], *state[5:]))):
            raise UnsafeCheckpointError(f"refusing to load checkpoint: dtype '{obj.descr}' with a forged state "
                                        f"{str(state)[:80]}")
        obj.order, obj.built = state[1], True

    def _build_array(self, obj, state):
        if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1):
            raise UnsafeCheckpointError("refusing to load checkpoint: array state is not (1, shape, dtype, "
                                        "fortran, bytes)")
        _, shape, dtype, fortran, raw = state
        if not isinstance(dtype, _DType) or not dtype.built:
            raise UnsafeCheckpointError("refusing to load checkpoint: array dtype is not a plain numeric dtype")
        if isinstance(raw, list):
            raise UnsafeCheckpointError("refusing to load checkpoint: object array (its elements would be "
                                        "Python objects)")
        if not isinstance(raw, (bytes, memoryview)) or not isinstance(fortran, bool):
            raise _bad("array data is not raw bytes")
        if not (isinstance(shape, tuple) and len(shape) <= MAX_NDIM
                and all(type(d) is int and d >= 0 for d in shape)):
            raise _bad(f"array shape {str(shape)[:60]} is not a tuple of non-negative integers")
        dt = dtype.dtype()
        count = 1
        for d in shape:
            count *= d
        if count * dt.itemsize != len(raw):
            raise _bad(f"array of shape {list(shape)} {dt.name} needs {count * dt.itemsize} bytes, "
                       f"the file holds {len(raw)}")
        obj.value = np.frombuffer(raw, dtype=dt, count=count).reshape(shape, order="F" if fortran else "C")

    # -- the opcode loop -----------------------------------------------
    def run(self):
        ops = _OPS
        while True:
            code = bytes(self.take(1))
            if code == b".":
                break
            handler = ops.get(code)
            if handler is None:
                if code in _UNSAFE_OPS:
                    raise UnsafeCheckpointError(f"refusing to load checkpoint: pickle opcode {_UNSAFE_OPS[code]} "
                                                "(constructs or looks up objects)")
                raise _bad(f"unsupported pickle opcode {code!r} at offset {self.pos - 1}")
            handler(self)
        if len(self.stack) != 1:
            raise _bad("the pickle does not end with exactly one object")
        return self.stack[0]


def _ints(fmt, n):
    return lambda r: r.push(struct.unpack(fmt, r.take(n))[0])


def _long1(r):
    n = r.uint(1)
    if n > 8:
        raise _bad("integer wider than 64 bits")
    r.push(int.from_bytes(r.take(n), "little", signed=True))


def _int_line(r):
    text = r.line()
    if text in ("00", "01"):
        return r.push(text == "01")
    try:
        value = int(text)
    except ValueError:
        raise _bad(f"bad INT {text[:20]!r}") from None
    if abs(value) >= 1 << 63:
        raise _bad("integer wider than 64 bits")
    r.push(value)


def _global_line(r):
    r.global_(r.line(), r.line())


def _stack_global(r):
    name, module = r.pop(), r.pop()
    if not isinstance(module, str) or not isinstance(name, str):
        raise _bad("STACK_GLOBAL needs two strings")
    r.global_(module, name)


def _tuple_n(n):
    def op(r):
        items = tuple(r.pop() for _ in range(n))[::-1]
        r.push(r.container(items, items))
    return op


def _mark_tuple(r):
    items = tuple(r.pop_mark())
    r.push(r.container(items, items))


def _mark_list(r):
    items = r.pop_mark()
    r.push(r.container(list(items), items))


def _mark_dict(r):
    items = r.pop_mark()
    d = r.container({})
    r.set_items(d, items)
    r.push(d)


def _append(r):
    value = r.pop()
    lst = r.target(list)
    r.adopt(lst, [value])
    lst.append(value)


def _appends(r):
    items = r.pop_mark()
    lst = r.target(list)
    r.adopt(lst, items)
    lst.extend(items)


def _setitem(r):
    value, key = r.pop(), r.pop()
    r.set_items(r.target(dict), [key, value])


def _setitems(r):
    items = r.pop_mark()
    r.set_items(r.target(dict), items)


def _proto(r):
    if r.uint(1) > 5:
        raise _bad("unknown pickle protocol")


def _line_index(r):
    text = r.line()
    if not text.isdigit():
        raise _bad(f"bad memo index {text[:20]!r}")
    return int(text)


_OPS = {
    b"\x80": _proto,
    b"\x95": lambda r: r.take(8),                      # FRAME: a length hint only
    b"(": lambda r: r.push(_MARK),
    b"0": lambda r: r.pop(),
    b"1": lambda r: r.pop_mark(),
    b"}": lambda r: r.push(r.container({})),
    b"]": lambda r: r.push(r.container([])),
    b")": lambda r: r.push(r.container(())),
    b"t": _mark_tuple,
    b"\x85": _tuple_n(1),
    b"\x86": _tuple_n(2),
    b"\x87": _tuple_n(3),
    b"d": _mark_dict,
    b"l": _mark_list,
    b"a": _append,
    b"e": _appends,
    b"s": _setitem,
    b"u": _setitems,
    b"q": lambda r: r.memo_put(r.uint(1)),
    b"r": lambda r: r.memo_put(r.uint(4)),
    b"p": lambda r: r.memo_put(_line_index(r)),
    b"\x94": lambda r: r.memo_put(len(r.memo)),
    b"h": lambda r: r.memo_get(r.uint(1)),
    b"j": lambda r: r.memo_get(r.uint(4)),
    b"g": lambda r: r.memo_get(_line_index(r)),
    b"K": lambda r: r.push(r.uint(1)),
    b"M": lambda r: r.push(r.uint(2)),
    b"J": _ints("<i", 4),
    b"I": _int_line,
    b"\x8a": _long1,
    b"G": _ints(">d", 8),
    b"\x88": lambda r: r.push(True),
    b"\x89": lambda r: r.push(False),
    b"N": lambda r: r.push(None),
    b"\x8c": lambda r: r.push(r.text(r.uint(1))),
    b"X": lambda r: r.push(r.text(r.uint(4))),
    b"\x8d": lambda r: r.push(r.text(r.uint(8))),
    b"C": lambda r: r.push(r.take(r.uint(1))),
    b"B": lambda r: r.push(r.take(r.uint(4))),
    b"\x8e": lambda r: r.push(r.take(r.uint(8))),
    b"c": _global_line,
    b"\x93": _stack_global,
    b"R": lambda r: r.reduce(),
    b"b": lambda r: r.build(),
}


def _resolve(obj):
    """Array placeholders -> arrays, one level (what a state dict holds)."""
    if isinstance(obj, _Array):
        if obj.value is None:
            raise _bad("an array without its data")
        return obj.value
    if isinstance(obj, tuple):
        return tuple(_resolve(v) if isinstance(v, _Array) else v for v in obj)
    return obj


def loads(data):
    """Parse a pickle whose root is a dict; return {key: value} with arrays
    resolved at the top level and inside (name, array) tuples. Arrays are
    read-only views of `data`."""
    root = _Reader(data).run()
    if not isinstance(root, dict):
        raise CheckpointError(f"expected a dict of parameters, got {type(root).__name__.lstrip('_')}")
    return {k: _resolve(v) for k, v in root.items()}
