"""A small typed ctypes binding over the system libbpf (`libbpf.so.1`).

Only what warden needs: open and load CO-RE objects, attach programs, pin and re-open links and
maps, operate on maps by fd, poll ring buffers, and read kernel object info (ids, tags).

Every libbpf failure becomes a `BpfError` carrying the errno and what libbpf printed while the
call ran (the verifier log included). libbpf reports through one process-wide print hook: this
module installs its own once and never swaps it, so that objects can be loaded from several threads
at once (the verifier is most of warden's start); what libbpf prints goes to the list of the thread
whose call is running, and is dropped outside a call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as errno_mod
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bpf.kernel.objects import bytes_digest

LIBBPF_SONAME = "libbpf.so.1"

# enum libbpf_print_level
_LIBBPF_WARN, _LIBBPF_INFO, _LIBBPF_DEBUG = 0, 1, 2

# bpf_map_update_elem flags
BPF_ANY, BPF_NOEXIST, BPF_EXIST = 0, 1, 2

_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_RINGBUF_SAMPLE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)

# Per-CPU map types: a lookup returns one 8-byte-aligned value per possible CPU.
_PERCPU_MAP_TYPES = frozenset({5, 6, 10, 21})  # PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH, PERCPU_CGROUP_STORAGE

_INFO_BUF_SIZE = 256  # larger than bpf_prog_info/bpf_map_info/bpf_link_info prefixes we read


class BpfError(Exception):
    """A libbpf or bpf() call failed."""

    def __init__(self, operation: str, err: int, libbpf_log: str = "") -> None:
        self.operation = operation
        self.errno = err
        self.libbpf_log = libbpf_log
        reason = os.strerror(err) if err else "unknown error"
        detail = f": {libbpf_log.strip().splitlines()[-1]}" if libbpf_log.strip() else ""
        super().__init__(f"{operation}: {errno_mod.errorcode.get(err, err)} ({reason}){detail}")


@dataclass(frozen=True)
class ProgInfo:
    id: int
    type: int
    tag: str  # hex of the kernel's 8-byte program tag (a hash of the translated instructions)
    name: str


@dataclass(frozen=True)
class MapInfo:
    id: int
    type: int
    key_size: int
    value_size: int
    max_entries: int
    name: str


@dataclass(frozen=True)
class LinkInfo:
    id: int
    type: int
    prog_id: int


class _PrintCapture:
    """libbpf's process-wide print hook, installed once: each thread's messages go to its own list."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self._libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
        self._libc.vsnprintf.restype = ctypes.c_int
        self._local = threading.local()
        self.hook = _PRINT_FN(self._on_print)  # kept referenced: libbpf holds the C pointer

    def _on_print(self, level: int, fmt: bytes | None, va_list: int | None) -> int:
        lines: list[str] | None = getattr(self._local, "lines", None)
        if level == _LIBBPF_DEBUG or fmt is None or lines is None:
            return 0
        buf = ctypes.create_string_buffer(4096)
        self._libc.vsnprintf(buf, len(buf), fmt, va_list)
        lines.append(buf.value.decode(errors="replace"))
        return 0

    @contextmanager
    def lines(self) -> Iterator[list[str]]:
        lines: list[str] = []
        self._local.lines = lines
        try:
            yield lines
        finally:
            self._local.lines = None


_capture_lock = threading.Lock()
_capture: _PrintCapture | None = None


def _print_capture(lib: ctypes.CDLL) -> _PrintCapture:
    global _capture
    with _capture_lock:
        if _capture is None:
            _capture = _PrintCapture()
            lib.libbpf_set_print(_capture.hook)
        return _capture


class Libbpf:
    """The loaded `libbpf.so.1` with typed signatures. Cheap to create; holds no kernel objects."""

    def __init__(self, soname: str = LIBBPF_SONAME) -> None:
        self._lib = ctypes.CDLL(soname, use_errno=True)
        self._declare()
        self._capture = _print_capture(self._lib)

    # -- message capture ---------------------------------------------------------------------

    def _captured(self) -> AbstractContextManager[list[str]]:
        return self._capture.lines()

    def call_int(self, operation: str, fn: Callable[..., int], *args: object) -> int:
        """Call a libbpf function returning 0/positive or -errno."""
        with self._captured() as lines:
            ret = fn(*args)
        if ret < 0:
            raise BpfError(operation, -ret, "".join(lines))
        return ret

    def call_ptr(self, operation: str, fn: Callable[..., int | None], *args: object) -> int:
        """Call a libbpf function returning a pointer, or NULL with errno set."""
        with self._captured() as lines:
            ctypes.set_errno(0)
            ptr = fn(*args)
            err = ctypes.get_errno()
        if not ptr:
            raise BpfError(operation, err or errno_mod.EINVAL, "".join(lines))
        return ptr

    # -- signatures ----------------------------------------------------------------------------

    def _declare(self) -> None:
        vp, cp, ci, cu32 = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint32
        signatures: dict[str, tuple[list[object], object]] = {
            "libbpf_set_print": ([_PRINT_FN], _PRINT_FN),
            "bpf_object__open_mem": ([vp, ctypes.c_size_t, vp], vp),
            "bpf_object__load": ([vp], ci),
            "bpf_object__close": ([vp], None),
            "bpf_object__find_program_by_name": ([vp, cp], vp),
            "bpf_object__find_map_by_name": ([vp, cp], vp),
            "bpf_object__next_program": ([vp, vp], vp),
            "bpf_program__name": ([vp], cp),
            "bpf_program__section_name": ([vp], cp),
            "bpf_program__fd": ([vp], ci),
            "bpf_program__autoload": ([vp], ctypes.c_bool),
            "bpf_program__set_autoload": ([vp, ctypes.c_bool], ci),
            "bpf_program__attach": ([vp], vp),
            "bpf_map__fd": ([vp], ci),
            "bpf_map__pin": ([vp, cp], ci),
            "bpf_map__reuse_fd": ([vp, ci], ci),
            "bpf_link__pin": ([vp, cp], ci),
            "bpf_link__open": ([cp], vp),
            "bpf_link__fd": ([vp], ci),
            "bpf_link__destroy": ([vp], ci),
            "bpf_obj_get": ([cp], ci),
            "bpf_obj_get_info_by_fd": ([ci, vp, ctypes.POINTER(cu32)], ci),
            "bpf_map_update_elem": ([ci, vp, vp, ctypes.c_uint64], ci),
            "bpf_map_lookup_elem": ([ci, vp, vp], ci),
            "bpf_map_delete_elem": ([ci, vp], ci),
            "bpf_map_get_next_key": ([ci, vp, vp], ci),
            "bpf_prog_get_fd_by_id": ([cu32], ci),
            "ring_buffer__new": ([ci, _RINGBUF_SAMPLE_FN, vp, vp], vp),
            "ring_buffer__poll": ([vp, ci], ci),
            "ring_buffer__free": ([vp], None),
            "libbpf_num_possible_cpus": ([], ci),
        }
        for name, (argtypes, restype) in signatures.items():
            fn = getattr(self._lib, name)
            fn.argtypes = argtypes
            fn.restype = restype

    def __getattr__(self, name: str) -> Any:
        # libbpf functions are reached as attributes (`lib.bpf_map__fd`), with the C signatures
        # declared above; ctypes functions are untyped to mypy, hence Any.
        return getattr(self._lib, name)

    # -- fd-level helpers ----------------------------------------------------------------------

    def obj_get(self, path: Path) -> int:
        """Open a pinned object; the caller owns the returned fd."""
        return self.call_int(f"bpf_obj_get({path})", self._lib.bpf_obj_get, str(path).encode())

    def _info(self, fd: int, what: str) -> bytes:
        buf = ctypes.create_string_buffer(_INFO_BUF_SIZE)
        length = ctypes.c_uint32(_INFO_BUF_SIZE)
        self.call_int(f"bpf_obj_get_info_by_fd({what})", self._lib.bpf_obj_get_info_by_fd,
                      fd, buf, ctypes.byref(length))
        return buf.raw

    def prog_info(self, fd: int) -> ProgInfo:
        raw = self._info(fd, "prog")
        return ProgInfo(
            type=int.from_bytes(raw[0:4], "little"),
            id=int.from_bytes(raw[4:8], "little"),
            tag=raw[8:16].hex(),
            name=raw[64:80].split(b"\0", 1)[0].decode(),
        )

    def map_info(self, fd: int) -> MapInfo:
        raw = self._info(fd, "map")
        words = [int.from_bytes(raw[i : i + 4], "little") for i in range(0, 24, 4)]
        return MapInfo(
            type=words[0], id=words[1], key_size=words[2], value_size=words[3], max_entries=words[4],
            name=raw[24:40].split(b"\0", 1)[0].decode(),
        )

    def link_info(self, fd: int) -> LinkInfo:
        raw = self._info(fd, "link")
        return LinkInfo(
            type=int.from_bytes(raw[0:4], "little"),
            id=int.from_bytes(raw[4:8], "little"),
            prog_id=int.from_bytes(raw[8:12], "little"),
        )

    def prog_map_ids(self, prog_id: int) -> tuple[int, ...]:
        """Ids of the maps program `prog_id` uses (bpf_prog_info's nr_map_ids and map_ids), its own
        maps among them: those no pin names."""
        fd = self.call_int(f"bpf_prog_get_fd_by_id({prog_id})", self._lib.bpf_prog_get_fd_by_id, prog_id)
        try:
            count = int.from_bytes(self._info(fd, "prog")[52:56], "little")
            ids = (ctypes.c_uint32 * count)()
            head = bytearray(_INFO_BUF_SIZE)
            head[52:56] = count.to_bytes(4, "little")  # nr_map_ids: room for this many
            head[56:64] = ctypes.addressof(ids).to_bytes(8, "little")  # map_ids: where
            buf = ctypes.create_string_buffer(bytes(head), _INFO_BUF_SIZE)
            length = ctypes.c_uint32(_INFO_BUF_SIZE)
            self.call_int("bpf_obj_get_info_by_fd(prog map ids)", self._lib.bpf_obj_get_info_by_fd,
                          fd, buf, ctypes.byref(length))
            return tuple(ids[: min(count, int.from_bytes(buf.raw[52:56], "little"))])
        finally:
            os.close(fd)

    def prog_info_by_id(self, prog_id: int) -> ProgInfo:
        fd = self.call_int(f"bpf_prog_get_fd_by_id({prog_id})", self._lib.bpf_prog_get_fd_by_id, prog_id)
        try:
            return self.prog_info(fd)
        finally:
            os.close(fd)


class MapHandle:
    """Element operations on a map fd (from a loaded object or a pin); keys/values are bytes."""

    def __init__(self, lib: Libbpf, fd: int, name: str, owns_fd: bool) -> None:
        self._lib = lib
        self.fd = fd
        self.name = name
        self._owns_fd = owns_fd
        self.info = lib.map_info(fd)
        # What one lookup returns (and update takes): per-CPU maps hold a value per possible CPU.
        if self.info.type in _PERCPU_MAP_TYPES:
            cpus = lib.call_int("libbpf_num_possible_cpus", lib.libbpf_num_possible_cpus)
            self.value_size = ((self.info.value_size + 7) // 8 * 8) * cpus
        else:
            self.value_size = self.info.value_size

    @classmethod
    def open_pinned(cls, lib: Libbpf, path: Path) -> MapHandle:
        fd = lib.obj_get(path)
        try:
            return cls(lib, fd, path.name, owns_fd=True)
        except BaseException:
            os.close(fd)
            raise

    def __enter__(self) -> MapHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self, data: bytes, size: int, what: str) -> ctypes.Array[ctypes.c_char]:
        if len(data) != size:
            raise ValueError(f"map {self.name}: {what} is {len(data)} bytes, the map wants {size}")
        return ctypes.create_string_buffer(data, size)

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        k = self._check(key, self.info.key_size, "key")
        v = self._check(value, self.value_size, "value")
        self._lib.call_int(f"map_update({self.name})", self._lib.bpf_map_update_elem, self.fd, k, v, flags)

    def lookup(self, key: bytes) -> bytes | None:
        k = self._check(key, self.info.key_size, "key")
        v = ctypes.create_string_buffer(self.value_size)
        try:
            self._lib.call_int(f"map_lookup({self.name})", self._lib.bpf_map_lookup_elem, self.fd, k, v)
        except BpfError as exc:
            if exc.errno == errno_mod.ENOENT:
                return None
            raise
        return v.raw

    def delete(self, key: bytes) -> bool:
        k = self._check(key, self.info.key_size, "key")
        try:
            self._lib.call_int(f"map_delete({self.name})", self._lib.bpf_map_delete_elem, self.fd, k)
        except BpfError as exc:
            if exc.errno == errno_mod.ENOENT:
                return False
            raise
        return True

    def keys(self) -> Iterator[bytes]:
        """Iterate keys (hash maps may skip or repeat keys changed during the walk)."""
        current = None
        nxt = ctypes.create_string_buffer(self.info.key_size)
        while True:
            try:
                self._lib.call_int(f"map_get_next_key({self.name})", self._lib.bpf_map_get_next_key,
                                   self.fd, current, nxt)
            except BpfError as exc:
                if exc.errno == errno_mod.ENOENT:
                    return
                raise
            key = nxt.raw
            yield key
            current = ctypes.create_string_buffer(key, self.info.key_size)

    def contents(self) -> dict[bytes, bytes]:
        """Every (key, value) pair, read key by key (a key deleted meanwhile is left out)."""
        out = {}
        for key in list(self.keys()):
            value = self.lookup(key)
            if value is not None:
                out[key] = value
        return out

    def cpu_values(self, key: bytes) -> list[bytes] | None:
        """The value of `key` on each possible CPU (one element for a map that is not per-CPU); None when
        the key is absent."""
        raw = self.lookup(key)
        if raw is None:
            return None
        if self.info.type not in _PERCPU_MAP_TYPES:
            return [raw]
        stride = (self.info.value_size + 7) // 8 * 8
        return [raw[i : i + self.info.value_size] for i in range(0, len(raw), stride)]

    def counter(self, key: bytes) -> int:
        """A u64 counter summed over CPUs (per-CPU maps count without atomics); 0 when the key is absent."""
        return sum(int.from_bytes(value[:8], "little") for value in self.cpu_values(key) or [])

    def close(self) -> None:
        if self._owns_fd and self.fd >= 0:
            os.close(self.fd)
        self.fd = -1


class MapSet(Mapping[str, MapHandle]):
    """Maps opened together and closed together: `with MapSet.open_pinned(lib, pins) as maps: ...`."""

    def __init__(self, handles: Mapping[str, MapHandle]) -> None:
        self._handles = dict(handles)

    @classmethod
    def open_pinned(cls, lib: Libbpf, pins: Mapping[str, Path]) -> MapSet:
        """Open every pin (name -> path); when one fails, those already open are closed."""
        handles = cls({})
        try:
            for name, path in pins.items():
                handles._handles[name] = MapHandle.open_pinned(lib, path)
        except BaseException:
            handles.close()
            raise
        return handles

    def __getitem__(self, name: str) -> MapHandle:
        return self._handles[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._handles)

    def __len__(self) -> int:
        return len(self._handles)

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()

    def __enter__(self) -> MapSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Link:
    """An attached BPF link. Destroying an unpinned link detaches it; a pinned one stays."""

    def __init__(self, lib: Libbpf, ptr: int, name: str) -> None:
        self._lib = lib
        self._ptr: int | None = ptr
        self.name = name

    @classmethod
    def open_pinned(cls, lib: Libbpf, path: Path) -> Link:
        ptr = lib.call_ptr(f"bpf_link__open({path})", lib.bpf_link__open, str(path).encode())
        return cls(lib, ptr, path.name)

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    @property
    def fd(self) -> int:
        return int(self._lib.bpf_link__fd(self._require()))

    def info(self) -> LinkInfo:
        return self._lib.link_info(self.fd)

    def program_info(self) -> ProgInfo:
        """The program this link runs (its tag says which code: a hash of the translated instructions)."""
        return self._lib.prog_info_by_id(self.info().prog_id)

    def pin(self, path: Path) -> None:
        self._lib.call_int(f"bpf_link__pin({path})", self._lib.bpf_link__pin, self._require(), str(path).encode())

    def release(self) -> None:
        """Drop our fd; the link stays attached if and only if it is pinned."""
        if self._ptr is not None:
            self._lib.bpf_link__destroy(self._ptr)
            self._ptr = None

    def _require(self) -> int:
        if self._ptr is None:
            raise BpfError(f"link {self.name}", errno_mod.EBADF, "link already released")
        return self._ptr


@dataclass(frozen=True)
class Program:
    lib: Libbpf
    ptr: int
    name: str
    section: str

    @property
    def fd(self) -> int:
        return int(self.lib.bpf_program__fd(self.ptr))

    def info(self) -> ProgInfo:
        return self.lib.prog_info(self.fd)

    def attach(self) -> Link:
        ptr = self.lib.call_ptr(f"bpf_program__attach({self.name})", self.lib.bpf_program__attach, self.ptr)
        return Link(self.lib, ptr, self.name)


class _OpenOpts(ctypes.Structure):
    """The head of libbpf's struct bpf_object_open_opts; `sz` tells libbpf how much of it is given."""

    _fields_ = [("sz", ctypes.c_size_t), ("object_name", ctypes.c_char_p)]


class BpfObject:
    """One CO-RE object file: open, then (optionally adjust maps,) load, then attach programs.

    The file is read once and libbpf opens those bytes (bpf_object__open_mem), so `digest` names
    exactly what is loaded: a file replaced after it was hashed cannot be what the kernel gets."""

    def __init__(self, lib: Libbpf, path: Path) -> None:
        self.lib = lib
        self.path = path
        data = path.read_bytes()
        self.digest = bytes_digest(data)
        # libbpf keeps pointing into the buffer (ELF parsing) until the object is closed: held here.
        self._buffer = ctypes.create_string_buffer(data, len(data))
        # The name libbpf would give the file (up to the first dot): it prefixes the internal maps.
        self._opts = _OpenOpts(ctypes.sizeof(_OpenOpts), path.name.split(".", 1)[0].encode())
        self._ptr: int | None = lib.call_ptr(
            f"bpf_object__open_mem({path})", lib.bpf_object__open_mem,
            ctypes.addressof(self._buffer), len(data), ctypes.byref(self._opts),
        )
        self.loaded = False

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _require(self) -> int:
        if self._ptr is None:
            raise BpfError(f"object {self.path}", errno_mod.EBADF, "object already closed")
        return self._ptr

    def load(self, *, maps_only: bool = False) -> None:
        """Create the object's maps and load its programs; `maps_only`: the maps alone (no program is
        loaded, and `programs()` is then empty)."""
        if maps_only:
            for prog in self.programs():
                self.lib.call_int(f"bpf_program__set_autoload({prog.name})", self.lib.bpf_program__set_autoload,
                                  prog.ptr, False)
        self.lib.call_int(f"bpf_object__load({self.path.name})", self.lib.bpf_object__load, self._require())
        self.loaded = True

    def programs(self) -> list[Program]:
        """The object's programs; once loaded, only those that were."""
        result = []
        prog = self.lib.bpf_object__next_program(self._require(), None)
        while prog:
            if not self.loaded or self.lib.bpf_program__autoload(prog):
                result.append(self._program(prog))
            prog = self.lib.bpf_object__next_program(self._require(), prog)
        return result

    def program(self, name: str) -> Program:
        ptr = self.lib.call_ptr(f"find program {name} in {self.path.name}",
                                self.lib.bpf_object__find_program_by_name, self._require(), name.encode())
        return self._program(ptr)

    def _program(self, ptr: int) -> Program:
        name = self.lib.bpf_program__name(ptr)
        section = self.lib.bpf_program__section_name(ptr)
        return Program(self.lib, ptr, bytes(name).decode(), bytes(section).decode())

    def map_ptr(self, name: str) -> int:
        return self.lib.call_ptr(f"find map {name} in {self.path.name}",
                                 self.lib.bpf_object__find_map_by_name, self._require(), name.encode())

    def reuse_map(self, name: str, fd: int) -> None:
        """Before load: make map `name` use an existing map (e.g. one opened from a pin)."""
        self.lib.call_int(f"bpf_map__reuse_fd({name})", self.lib.bpf_map__reuse_fd, self.map_ptr(name), fd)

    def map(self, name: str) -> MapHandle:
        """After load: element access to map `name`; the fd stays owned by the object."""
        fd = self.lib.call_int(f"bpf_map__fd({name})", self.lib.bpf_map__fd, self.map_ptr(name))
        return MapHandle(self.lib, fd, name, owns_fd=False)

    def pin_map(self, name: str, path: Path) -> None:
        self.lib.call_int(f"bpf_map__pin({name})", self.lib.bpf_map__pin, self.map_ptr(name), str(path).encode())

    def close(self) -> None:
        """Close the object. Programs stay attached only through pinned links."""
        if self._ptr is not None:
            self.lib.bpf_object__close(self._ptr)
            self._ptr = None


RingBufferCallback = Callable[[bytes], None]


class RingBuffer:
    """A libbpf ring buffer consumer over a BPF_MAP_TYPE_RINGBUF map fd."""

    def __init__(self, lib: Libbpf, map_fd: int, callback: RingBufferCallback) -> None:
        self._lib = lib
        self._callback = callback
        self._error: BaseException | None = None
        self._sample_hook = _RINGBUF_SAMPLE_FN(self._on_sample)
        self._ptr: int | None = lib.call_ptr("ring_buffer__new", lib.ring_buffer__new,
                                             map_fd, self._sample_hook, None, None)

    def _on_sample(self, _ctx: int | None, data: int | None, size: int) -> int:
        try:
            self._callback(ctypes.string_at(data or 0, size))
        except BaseException as exc:  # carried out of the C callback, re-raised by poll()
            self._error = exc
            return -1
        return 0

    def poll(self, timeout_ms: int) -> int:
        """Wait up to `timeout_ms` for events and deliver them; returns how many were consumed."""
        if self._ptr is None:
            raise BpfError("ring_buffer__poll", errno_mod.EBADF, "ring buffer freed")
        try:
            count = self._lib.call_int("ring_buffer__poll", self._lib.ring_buffer__poll, self._ptr, timeout_ms)
        except BpfError as exc:
            if exc.errno == errno_mod.EINTR:
                return 0
            if self._error is None:
                raise
            count = 0
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return count

    def free(self) -> None:
        if self._ptr is not None:
            self._lib.ring_buffer__free(self._ptr)
            self._ptr = None
