"""chatapp's own int4 product for CPUs with AVX512-VNNI, built from C++ at run time.

torch's CPU int4 kernel (`torch._weight_int4pack_mm_for_cpu`) turns every 4-bit weight into a
bfloat16 number and multiplies in floating point. `chatapp/runtime/kernels/int4_vnni.cpp` instead rounds
the activations to integers and sums integer products with the CPU's dot product instructions,
as llama.cpp does: `torch.ops.chatapp.int4_linear` for one product,
`torch.ops.chatapp.decode_layers` for a Llama-family model's layers over one token (a decode step)
or many (a prefill: from 8 tokens its products run on AMX-INT8 tiles where the CPU has them,
`kernels/amx_int4.h`, else from 20 tokens they dequantize each weight once to float32 and run
torch's matrix product; its attention is torch's fused one), and
`torch.ops.chatapp.decode_step` for the whole step, the LM head and the choice of the next token
included (the LM head's C++ in `kernels/lm_head_steps.h`, shared with the block kernel), and
`torch.ops.chatapp.choose_from_head` for that head and choice alone (a GGUF model's LM head read
through its 4-bit copy, `chatapp.runtime.requantized_head`). How
much faster that is, is measured in the README (Performance).

The kernel is compiled with the machine's C++ compiler the first time it is wanted (about 20 s)
and kept in the user cache directory, with a sidecar file holding its size and sha256: a library
that does not match it (a truncated one would crash the process with SIGBUS once loaded) is
deleted and built again; loading it marks it used and removes the builds of other sources that
nothing has loaded for two weeks. `chatapp.runtime.kernel_switch` loads it on a thread of its own,
so a chat never waits for a compile: decoding runs on the TorchScript layers meanwhile and
switches when it is ready. Without a compiler, or on a CPU without AVX512-VNNI, decoding simply
stays on torch's kernel.

The weights' layout, and the arithmetic of every int4 product, are described in
`chatapp.runtime.int4_layout`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch
from platformdirs import user_cache_dir

from chatapp.support.stale_files import remove_stale_staging, remove_unused

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels") / "int4_vnni.cpp"
EXP_HEADER = SOURCE.with_name("vector_exp.h")
"""The vector exponential `SOURCE` includes (shared with the block kernel): part of the build's key."""
HEADERS = [EXP_HEADER, SOURCE.with_name("block_dot.h"), SOURCE.with_name("lm_head_steps.h"), SOURCE.with_name("attention.h"),
           SOURCE.with_name("parallel_rows.h"), SOURCE.with_name("amx_int4.h")]
"""Every header `SOURCE` includes (the LM head's steps and the block layout, for `decode_step`;
the attention of a head and the parallel loops, shared with the block kernel): part of the
build's key."""
CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_vnni")
"""The CPU features the kernel is compiled for."""
COMPILE_FLAGS = ["-O3", "-march=native", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni", "-mfma", "-fopenmp"]
"""Built for this machine's CPU only (`-march=native`: `_library_path` keys the library to the CPU)."""
BUILD_TIMEOUT = 300
"""Seconds a compile may take before we give up on it."""
SIDECAR_SUFFIX = ".sha256"
"""Beside each built library, a file of that name plus this holds its size and sha256."""
SCRATCH_PREFIX = ".building-"
"""Build folders in `kernels_dir()` are named this, the building process's id and a dash."""

_LIBRARY = torch.library.Library("chatapp", "DEF")
_LIBRARY.define("int4_linear(Tensor x, Tensor weight, Tensor scales, Tensor zeros) -> Tensor")
_LIBRARY.define(
    "decode_layers(Tensor(a!) x, Tensor cos, Tensor sin, Tensor[] norms, Tensor[] weights, Tensor(b!) cache, "
    "int position, int heads, int kv_heads, float eps) -> ()"
)
_LIBRARY.define(
    "decode_step(int token, Tensor[] embedding, int[] embedding_format, Tensor cos, Tensor sin, Tensor[] norms, "
    "Tensor[] weights, Tensor(a!) cache, int position, int heads, int kv_heads, float eps, Tensor final_norm, "
    "Tensor[] head, int vocab, int exact_top, Tensor always, Tensor[] exact, int[] exact_format, float temperature, "
    "int k, float top_p, float min_p, float penalty, Tensor previous_ids, Generator? generator, int top_n) "
    "-> (Tensor, Tensor, Tensor, Tensor)"
)
_LIBRARY.define(
    "choose_from_head(Tensor hidden, Tensor[] head, int vocab, int exact_top, Tensor always, Tensor[] exact, "
    "int[] exact_format, float softcap, float temperature, int k, float top_p, float min_p, float penalty, "
    "Tensor previous_ids, Generator? generator, int top_n) -> (Tensor, Tensor, Tensor)"
)
# The schema is defined here, so TorchScript can compile code that calls the op before the
# kernel (which registers only the CPU implementation) is loaded; nothing calls it until then.


def kernels_dir() -> Path:
    """Where built kernels are kept."""
    return Path(user_cache_dir("chatapp")) / "kernels"


@functools.cache
def _cpu_lines() -> tuple[str, ...]:
    """The first CPU's model name and flags lines of /proc/cpuinfo (none where it cannot be read)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ()
    first = lines[: lines.index("")] if "" in lines else lines
    return tuple(line for line in first if line.startswith(("model name", "flags")))


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags, as /proc/cpuinfo names them (none where it cannot be read)."""
    for line in _cpu_lines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_supported() -> bool:
    """Whether this CPU has the instructions the kernel uses (read from /proc/cpuinfo)."""
    return all(flag in cpu_flags() for flag in CPU_FLAGS)


def _library_path() -> Path:
    """The built kernel for this source, torch and compiler flags."""
    key = hashlib.sha256(
        SOURCE.read_bytes() + b"".join(header.read_bytes() for header in HEADERS) + torch.__version__.encode() + " ".join(COMPILE_FLAGS).encode() + sys.version.encode()
        + "\n".join(_cpu_lines()).encode()  # built with -march=native: for this CPU only
    ).hexdigest()[:16]
    return kernels_dir() / f"int4_vnni-{key}.so"


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _build(target: Path) -> None:
    """Compile the kernel into `target`, with its sidecar (`_write_sidecar`) written first, each
    moved into place whole, so a reader never loads half a library and concurrent builds are
    harmless. The compiler is killed (and this raises) when `cancel_build` is called meanwhile."""
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C++ compiler found")
    root = Path(torch.__file__).parent
    abi = int(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", True))
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=target.parent) as scratch:
        output = Path(scratch) / target.name
        command = [
            compiler, str(SOURCE), "-o", str(output), "-shared", "-fPIC", "-std=c++17", "-w",
            *COMPILE_FLAGS, f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
            "-I", str(root / "include"), "-I", str(root / "include" / "torch" / "csrc" / "api" / "include"),
            "-L", str(root / "lib"), "-lc10", "-ltorch_cpu", f"-Wl,-rpath,{root / 'lib'}",
        ]
        returncode, errors = _compile(command)
        if returncode != 0:
            raise RuntimeError(f"compiling the int4 kernel failed: {errors.strip()[-400:]}")
        _write_sidecar(output, _sidecar_path(target), Path(scratch))
        os.replace(output, target)


def _compile(command: list[str]) -> tuple[int, str]:
    """Run the compiler; its exit status and error output. Its process is kept in `_State.compiler`
    so `cancel_build` can kill it; a cancelled or timed-out compile raises RuntimeError."""
    with _State.compiler_lock:
        if _State.cancelled:
            raise RuntimeError("the int4 kernel's compile was cancelled")
        # A session of its own: the compiler driver runs cc1plus, as and ld as its children, and
        # killing the group stops them all.
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True)
        _State.compiler = process
    try:
        _, errors = process.communicate(timeout=BUILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        _kill(process)
        process.communicate()
        raise RuntimeError(f"compiling the int4 kernel took over {BUILD_TIMEOUT} s") from None
    finally:
        with _State.compiler_lock:
            _State.compiler = None
    if _State.cancelled:
        raise RuntimeError("the int4 kernel's compile was cancelled")
    return process.returncode, errors


def cancel_build() -> None:
    """Kill a compile in progress and refuse later ones (at interpreter exit: a compile takes
    10 s or more, and nothing would use its result)."""
    with _State.compiler_lock:
        _State.cancelled = True
        if _State.compiler is not None:
            _kill(_State.compiler)


def _kill(process: subprocess.Popen) -> None:
    """Kill the compiler `process` and every process it started (its process group)."""
    with contextlib.suppress(OSError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        process.kill()


def _sidecar_path(library: Path) -> Path:
    """The file beside `library` holding its size and sha256."""
    return library.with_name(library.name + SIDECAR_SUFFIX)


def _digest(path: Path) -> str:
    """The sha256 of the file at `path`, in hex."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_sidecar(library: Path, sidecar: Path, scratch: Path) -> None:
    """Write `library`'s size and sha256 to `sidecar`, whole (through a file in `scratch`)."""
    draft = scratch / sidecar.name
    draft.write_text(f"{library.stat().st_size} {_digest(library)}\n", encoding="ascii")
    os.replace(draft, sidecar)


def _verified(library: Path) -> bool:
    """Whether `library` exists and is the file its sidecar describes (size and sha256); a
    truncated library would crash the process with SIGBUS once loaded."""
    try:
        size, digest = _sidecar_path(library).read_text(encoding="ascii").split()
        return library.stat().st_size == int(size) and _digest(library) == digest
    except (OSError, ValueError):
        return False


def _discard_damaged(library: Path) -> None:
    """Remove a library that fails `_verified` (and its sidecar), saying so once in the log."""
    if library.exists():
        log.warning("the int4 kernel in %s was damaged; rebuilding it", library)
    for path in (library, _sidecar_path(library)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def remove_stale_scratch(folder: Path | None = None) -> None:
    """Remove kernel build folders in `folder` (default `kernels_dir()`) left by processes that died
    mid-compile (`chatapp.support.stale_files.remove_stale_staging`)."""
    remove_stale_staging(folder or kernels_dir(), SCRATCH_PREFIX)


class _State:
    lock = threading.Lock()
    loaded = False
    error: str | None = None
    compiler_lock = threading.Lock()
    compiler: subprocess.Popen | None = None
    """The compiler while a build runs, for `cancel_build`."""
    cancelled = False
    """Set by `cancel_build`: no compile is started or kept from then on."""


def loaded() -> bool:
    """Whether the kernel is loaded and `torch.ops.chatapp.int4_linear` runs."""
    return _State.loaded


def failure() -> str | None:
    """Why the kernel is not available, once a load has been tried and failed."""
    return _State.error


def wanted() -> str | None:
    """Why the kernel is not to be used here (turned off, or the CPU lacks its instructions),
    or None."""
    if os.environ.get("CHATAPP_INT4_KERNEL", "1") == "0":
        return "turned off by CHATAPP_INT4_KERNEL=0"
    if not cpu_supported():
        return "the CPU lacks AVX512-VNNI"
    return None


def built() -> bool:
    """Whether the kernel is wanted and already compiled (so `load` takes milliseconds)."""
    return wanted() is None and (_State.loaded or (_State.error is None and _verified(_library_path())))


def lend_threads(lent: int) -> None:
    """From now on the kernel's parallel loops run on `lent` threads fewer than torch's (0: on all
    of them; `kernels/parallel_rows.h`), where it is loaded (`chatapp.engine.core_lending`)."""
    if _State.loaded:
        torch.ops.chatapp.lend_threads(lent)


def bind_threads(cpus: list[int]) -> list[int] | None:
    """Bind thread i of the calling thread's team of torch's threads (the one the kernel's loops
    run on) to `cpus[i]`; the threads' Linux ids (-1: not bound), or None where the kernel is not
    loaded (`chatapp.engine.core_lending`, `kernels/parallel_rows.h`)."""
    if _State.loaded:
        return list(torch.ops.chatapp.bind_threads(cpus))
    return None


PREFILL_TILES_VARIABLE = "CHATAPP_PREFILL_TILES"
"""Set to 0, a prefill's products run as float32 products instead of on AMX-INT8 tiles."""


def prefill_tiles_wanted() -> bool:
    """Whether this process's environment leaves a prefill's products on the tiles (`PREFILL_TILES_VARIABLE`)."""
    return os.environ.get(PREFILL_TILES_VARIABLE, "1") != "0"


def prefill_tiles(wanted: bool = True) -> bool:
    """Run a prefill's int4 products (from 8 tokens) on AMX-INT8 tiles (`kernels/amx_int4.h`:
    activations rounded to 11 bits per block of 32) where this CPU and Linux allow, or (False) as
    float32 products of the dequantized weights; whether they now run on tiles. False where the
    kernel is not loaded. `load` sets it from the environment (`prefill_tiles_wanted`)."""
    if _State.loaded:
        return bool(torch.ops.chatapp.prefill_tiles(wanted))
    return False


def load() -> bool:
    """Build (if needed) and load the kernel; whether it is now usable. Safe from any thread."""
    with _State.lock:
        if _State.loaded or _State.error is not None:
            return _State.loaded
        try:
            reason = wanted()
            if reason is not None:
                raise RuntimeError(reason)
            target = _library_path()
            remove_stale_scratch(target.parent)
            if not _verified(target):
                _discard_damaged(target)
                log.info("compiling the int4 kernel into %s", target)
                _build(target)
            torch.ops.load_library(str(target))
            _State.loaded = True
            prefill_tiles(prefill_tiles_wanted())
            log.info("int4 kernel loaded from %s", target)
            for old in remove_unused(target.parent, "int4_vnni-*.so", keep=target):
                log.info("removed %s, a build of other sources that nothing used for a long time", old)
        except Exception as error:  # noqa: BLE001 - any failure means: keep torch's kernel
            _State.error = str(error).splitlines()[0] if str(error) else type(error).__name__
            log.info("int4 kernel not available: %s", _State.error)
        return _State.loaded
