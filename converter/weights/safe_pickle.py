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

from converter.errors import CheckpointError, UnsafeCheckpointError
from converter.weights.pickle_numpy import KNOWN, Global, bad as _bad, build, reduce, resolve

MAX_OBJECTS = 1_000_000   # a release-2.3 state dict needs ~20 per parameter (~2,000 parameters)
MAX_DEPTH = 32
# Opcodes that name or call objects, or reach outside the file: never needed.
_UNSAFE_OPS = {b"i": "INST", b"o": "OBJ", b"\x81": "NEWOBJ", b"\x92": "NEWOBJ_EX", b"P": "PERSID",
               b"Q": "BINPERSID", b"\x82": "EXT1", b"\x83": "EXT2", b"\x84": "EXT4"}


class _Mark:
    __slots__ = ()


_MARK = _Mark()


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
            top = type(self.stack[-1]).__name__ if self.stack else "empty stack"
            raise _bad(f"{'SETITEM' if kind is dict else 'APPEND'} on a {top}")
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
        if (module, name) not in KNOWN:
            raise UnsafeCheckpointError(
                f"refusing to load checkpoint: it references {module}.{name}, "
                "which a parameter file never needs (possibly malicious)")
        self.push(Global(module, name))

    def reduce(self):
        args = self.pop()
        func = self.pop()
        self.push(reduce(self, func, args))  # pickle_numpy: the only forms accepted

    def build(self):
        state = self.pop()
        build(self.stack[-1] if self.stack else None, state)

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


def loads(data):
    """Parse a pickle whose root is a dict; return {key: value} with arrays
    resolved at the top level and inside (name, array) tuples. Arrays are
    read-only views of `data`."""
    root = _Reader(data).run()
    if not isinstance(root, dict):
        raise CheckpointError(f"expected a dict of parameters, got {type(root).__name__.lstrip('_')}")
    return {k: resolve(v) for k, v in root.items()}
