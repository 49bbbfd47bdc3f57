"""A strict stand-in for CuPy, built on NumPy, so CI without a GPU runs the device path.

It is as strict as CuPy where CuPy is strict, so host/device mixing bugs fail
here rather than on the first GPU run:

* ``np.asarray(dev)`` (``__array__``) raises TypeError: CuPy refuses implicit
  device-to-host conversion. ``dev.get()`` and :func:`asnumpy` copy to the host.
* Functions of this module and operators of :class:`DeviceArray` refuse NumPy
  arrays of one or more dimensions (CuPy's kernels raise TypeError on them);
  Python and NumPy scalars and 0-d NumPy arrays are fine, and so are NumPy
  arrays as indices or as values assigned into a device array.
* Reductions and scalar indexing return 0-d device arrays, never Python or
  NumPy scalars. ``float()``, ``int()``, ``bool()`` of a 0-d device array are
  allowed (CuPy synchronises and copies); of a larger array they raise.
* Every read-back to the host (``get``, ``asnumpy``, ``item``, ``tolist``, a
  scalar conversion, and the two inside CuPy's ``bincount``) is counted in
  :data:`READS`: on a GPU each one waits for the device's queue to drain, so a
  batch's count per tile is a design figure.
* Each array remembers the fake device current when it was made; using it in a
  computation while another device is current raises ValueError (CuPy does
  without peer access), and ``cuda.Device(i)`` switches the current device per
  thread, as in CuPy.

NumPy's ufuncs and array functions called on device arrays dispatch here
(``__array_ufunc__`` / ``__array_function__``), as they do for CuPy, and so
return device arrays.

Use ``Backend(name="cupy:0", xp=strict_xp, device=0, workers=1)``.
"""

from __future__ import annotations

import threading
import types
from typing import Any

import numpy as np

_local = threading.local()

#: Number of fake devices.
DEVICES = 2

#: Read-backs to the host so far (device to host copies and scalar conversions), in all threads.
READS = [0]


def _read() -> None:
    READS[0] += 1


def _current() -> int:
    return getattr(_local, "device", 0)


class DeviceArray:
    """A NumPy array that lives on a fake device (``.device`` int)."""

    __slots__ = ("_a", "device")
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, a: np.ndarray, device: int | None = None):
        assert isinstance(a, np.ndarray)
        self._a = a
        self.device = _current() if device is None else device

    # -- host transfer -------------------------------------------------
    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a NumPy array explicitly.")

    def get(self) -> np.ndarray:
        _read()
        return self._a.copy()

    # -- scalars -------------------------------------------------------
    def _scalar(self) -> Any:
        if self._a.ndim != 0:
            raise TypeError(f"only 0-d device arrays convert to Python scalars, got shape {self._a.shape}")
        _read()
        return self._a[()]

    def __float__(self) -> float:
        return float(self._scalar())

    def __int__(self) -> int:
        return int(self._scalar())

    def __bool__(self) -> bool:
        return bool(self._scalar())

    def __complex__(self) -> complex:
        return complex(self._scalar())

    def item(self) -> Any:
        _read()
        return self._a.item()

    def tolist(self) -> Any:
        _read()
        return self._a.tolist()

    # -- container -----------------------------------------------------
    def __len__(self) -> int:
        return len(self._a)

    def __iter__(self):
        for i in range(len(self._a)):
            yield self[i]

    def __getitem__(self, key: Any) -> DeviceArray:
        if any(isinstance(k, (DeviceArray, np.ndarray, list)) for k in _leaves([key])):
            _check_device([self, key])  # a gather runs a kernel; a view (basic slicing) does not
            return _wrap(self._a[_unwrap_index(key)])
        return _wrap(self._a[key], self.device)

    def __setitem__(self, key: Any, value: Any) -> None:
        _check_device([self, value])
        self._a[_unwrap_index(key)] = value._a if isinstance(value, DeviceArray) else value

    def __repr__(self) -> str:
        return f"DeviceArray({self._a!r}, device={self.device})"

    def __format__(self, spec: str) -> str:
        return format(self._scalar(), spec)

    # -- attributes and methods of ndarray -----------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: _wrap(self._a.T, self.device))
    real = property(lambda self: _wrap(self._a.real, self.device))
    imag = property(lambda self: _wrap(self._a.imag, self.device))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # no __array_interface__, __array_struct__, ...: those would bypass __array__
            raise AttributeError(name)
        attr = getattr(self._a, name)  # AttributeError as ndarray would
        if not callable(attr):
            return _wrap_out(attr)

        def method(*args: Any, **kwargs: Any) -> Any:
            _check_device([self, *args, *kwargs.values()])
            return _wrap_out(attr(*_unwrap(args), **_unwrap(kwargs)))

        return method

    # -- NumPy protocols: np.<ufunc>(dev) and np.<function>(dev) dispatch here, as for CuPy
    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        _check_args(inputs, kwargs)
        out = kwargs.get("out")
        result = getattr(ufunc, method)(*_unwrap(inputs), **_unwrap(kwargs))
        if out is not None:
            return out[0] if isinstance(out, tuple) and len(out) == 1 else out
        return _wrap_out(result)

    def __array_function__(self, func: Any, types_: Any, args: Any, kwargs: Any) -> Any:
        name = func.__name__
        if name in ("asarray", "array", "asanyarray", "ascontiguousarray"):
            raise TypeError(f"numpy.{name} of a device array: use .get() or asnumpy()")
        ours = _MODULE_FUNCS.get(name)
        if ours is None:
            return NotImplemented
        return ours(*args, **kwargs)


def _binary(name: str):
    def op(self: DeviceArray, other: Any) -> Any:
        _check_args((self, other), {})
        result = getattr(self._a, name)(other._a if isinstance(other, DeviceArray) else other)
        if result is NotImplemented:
            return NotImplemented
        return _wrap_out(result)

    return op


def _inplace(name: str):
    def op(self: DeviceArray, other: Any) -> DeviceArray:
        _check_args((self, other), {})
        getattr(self._a, name)(other._a if isinstance(other, DeviceArray) else other)
        return self

    return op


def _unary(name: str):
    def op(self: DeviceArray) -> DeviceArray:
        _check_device([self])
        return _wrap_out(getattr(self._a, name)())

    return op


for _n in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor", "lshift", "rshift"):
    setattr(DeviceArray, f"__{_n}__", _binary(f"__{_n}__"))
    setattr(DeviceArray, f"__r{_n}__", _binary(f"__r{_n}__"))
    setattr(DeviceArray, f"__i{_n}__", _inplace(f"__i{_n}__"))
for _n in ("lt", "le", "gt", "ge", "eq", "ne"):
    setattr(DeviceArray, f"__{_n}__", _binary(f"__{_n}__"))
for _n in ("neg", "pos", "abs", "invert"):
    setattr(DeviceArray, f"__{_n}__", _unary(f"__{_n}__"))


# ------------------------------------------------------------- plumbing


def _wrap(a: Any, device: int | None = None) -> DeviceArray:
    return DeviceArray(np.asarray(a) if isinstance(a, np.generic) else a, device)


def _wrap_out(x: Any) -> Any:
    """NumPy results to device arrays (scalars to 0-d arrays); containers element-wise."""
    if isinstance(x, (np.ndarray, np.generic)):
        return _wrap(x)
    if isinstance(x, tuple):
        return tuple(_wrap_out(v) for v in x)
    if isinstance(x, list):
        return [_wrap_out(v) for v in x]
    return x


def _unwrap(x: Any) -> Any:
    if isinstance(x, DeviceArray):
        return x._a
    if isinstance(x, tuple):
        return tuple(_unwrap(v) for v in x)
    if isinstance(x, list):
        return [_unwrap(v) for v in x]
    if isinstance(x, dict):
        return {k: _unwrap(v) for k, v in x.items()}
    return x


def _unwrap_index(key: Any) -> Any:
    if isinstance(key, DeviceArray):
        return key._a
    if isinstance(key, tuple):
        return tuple(_unwrap_index(k) for k in key)
    return key


def _leaves(x: Any):
    if isinstance(x, (tuple, list)):
        for v in x:
            yield from _leaves(v)
    elif isinstance(x, dict):
        for v in x.values():
            yield from _leaves(v)
    else:
        yield x


def _check_device(args: Any) -> None:
    dev = _current()
    for v in _leaves(list(args)):
        if isinstance(v, DeviceArray) and v.device != dev:
            raise ValueError(f"array on device {v.device} used while device {dev} is current")


def _check_args(args: Any, kwargs: dict[str, Any]) -> None:
    """CuPy kernels take device arrays and scalars, not NumPy arrays."""
    for v in _leaves([args, kwargs]):
        if isinstance(v, np.ndarray) and v.ndim > 0:
            raise TypeError(f"Unsupported type {type(v)}: a host NumPy array {v.shape} was passed to a device computation")
    _check_device([args, kwargs])


def _device_func(f: Any) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        _check_args(args, kwargs)
        out = kwargs.get("out")
        result = f(*_unwrap(args), **_unwrap(kwargs))
        if isinstance(out, DeviceArray):
            return out
        return _wrap_out(result)

    call.__name__ = getattr(f, "__name__", "func")
    return call


class _Namespace(types.SimpleNamespace):
    """Wraps a NumPy namespace: functions run on device arrays; types and constants pass through."""

    __hash__ = object.__hash__  # hashable by identity, as a module is (Backend is a cache key)

    def __eq__(self, other: Any) -> bool:
        return self is other

    def __init__(self, base: Any, **extra: Any):
        super().__init__(**extra)
        self._base = base

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        obj = getattr(self._base, name)
        if isinstance(obj, (type, types.ModuleType)) or not callable(obj):
            return obj
        f = _device_func(obj)
        setattr(self, name, f)
        return f


# -------------------------------------------------------------- module API


def asarray(a: Any, dtype: Any = None, order: Any = None) -> DeviceArray:
    """Copy host data to the current device (a device array already there is returned as is)."""
    if isinstance(a, DeviceArray):
        if a.device != _current():  # CuPy copies across devices
            a = DeviceArray(a._a.copy())
        return a if dtype is None else DeviceArray(a._a.astype(dtype, copy=False))
    return DeviceArray(np.array(_unwrap(a), dtype=dtype, order=order or "K", copy=True))


def bincount(x: Any, weights: Any = None, minlength: int = 0) -> DeviceArray:
    """``np.bincount`` on the device, with CuPy's two waits for the device: it checks the input for negative values and
    reads its maximum before sizing the output."""
    _read()
    _read()
    return _device_func(np.bincount)(x, weights, minlength)


def array(a: Any, dtype: Any = None, copy: bool = True, order: Any = None) -> DeviceArray:
    out = asarray(a, dtype, order)
    return DeviceArray(out._a.copy()) if copy and isinstance(a, DeviceArray) else out


def asnumpy(a: Any) -> np.ndarray:
    """Copy to the host: device arrays to NumPy; NumPy input is returned as an array."""
    if isinstance(a, DeviceArray):
        _read()
        return a._a.copy()
    return np.asarray(a)


def get_array_module(*args: Any) -> Any:
    return _MODULE if any(isinstance(a, DeviceArray) for a in args) else np


class _Device:
    """``cuda.Device(i)``: a context manager that makes device ``i`` current in this thread."""

    def __init__(self, device: int | None = None):
        self.id = _current() if device is None else int(device)
        if not 0 <= self.id < DEVICES:
            raise ValueError(f"invalid device ordinal {self.id}")
        self._prev: list[int] = []

    def __enter__(self) -> _Device:
        self._prev.append(_current())
        _local.device = self.id
        return self

    def __exit__(self, *exc: Any) -> bool:
        _local.device = self._prev.pop()
        return False

    def use(self) -> None:
        _local.device = self.id

    def synchronize(self) -> None:
        pass


_runtime = types.SimpleNamespace(getDevice=_current, getDeviceCount=lambda: DEVICES)
cuda = types.SimpleNamespace(Device=_Device, runtime=_runtime)

_MODULE = _Namespace(
    np,
    asarray=asarray,
    array=array,
    asnumpy=asnumpy,
    bincount=bincount,
    get_array_module=get_array_module,
    ndarray=DeviceArray,
    cuda=cuda,
    fft=_Namespace(np.fft),
    linalg=_Namespace(np.linalg),
)

#: numpy function name -> device implementation, for ``__array_function__``.
_MODULE_FUNCS: dict[str, Any] = {}


class _FuncTable(dict):
    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        try:
            return getattr(_MODULE, name)
        except AttributeError:
            return default


_MODULE_FUNCS = _FuncTable()


def module() -> Any:
    """The fake ``cupy`` module object (pass it as ``Backend.xp``)."""
    return _MODULE
