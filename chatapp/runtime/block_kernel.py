"""chatapp's block kernel: linear layers straight from GGUF's block quantization, built per CPU.

`kernels/block_dot.h` holds plain fixed-length loops; the compiler vectorizes
them for the instruction set each build targets (`BUILDS`): AVX512 (this machine), AVX2 (most
x86 laptops), or none (any other CPU, ARM included, where the compiler still uses what it is
allowed). `build_for_cpu` picks the widest this CPU runs. Builds go through
`torch.utils.cpp_extension.load` (with ninja, a dependency), which keeps them in its own build
folder under `kernels_dir()` and rebuilds only when the source or the flags change; each build's
operators live under their own namespace (`torch.ops.chatapp_blocks_<build>`), so a process can
hold two (the tests hold AVX2 to AVX512). Loading a build marks it used and removes the builds
that nothing has loaded for two weeks (those of older sources: `_tidy`).

Without a compiler, `ops()` is None and `chatapp.runtime.block_linear` computes in plain torch.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import threading
import time
from pathlib import Path

import torch

from chatapp.runtime.int4_kernel import EXP_HEADER, cpu_flags, kernels_dir
from chatapp.support.stale_files import remove_unused

log = logging.getLogger(__name__)

KERNELS = Path(__file__).with_name("kernels")
SOURCES = [KERNELS / "block_linear.cpp", KERNELS / "layer_step.cpp", KERNELS / "lm_head_steps.cpp"]
"""The operators (`block_linear`, `block_dequantize`, `block_rows`) and the decode step
(`decode_layers`), both over the arithmetic of `HEADER`, and the LM head's `top_k`, `kept_ids`,
`raw_summary` and `choose_token` (over `STEPS_HEADER`'s vocabulary passes)."""
HEADER = KERNELS / "block_dot.h"
STEPS_HEADER = KERNELS / "lm_head_steps.h"
ATTENTION_HEADER = KERNELS / "attention.h"
ROWS_HEADER = KERNELS / "parallel_rows.h"
BUILD_STAMP = "chatapp-build-key"
"""Beside a finished build: `_build_key` of what it was built from."""
STALE_LOCK_SECONDS = 300
"""A build's lock file older than this was left by a build that was killed (one takes about 20 s)."""
LAST_OPERATOR = "choose_token"
"""Registered by the last of `SOURCES`: a namespace that has it holds every operator of a build."""
BUILDS = {
    "avx512": (("avx512f", "avx512bw", "avx512vl", "fma", "f16c"),
               ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mfma", "-mf16c", "-mprefer-vector-width=512"]),
    "avx2": (("avx2", "fma", "f16c"), ["-mavx2", "-mfma", "-mf16c"]),
    "generic": ((), []),
}
"""Each build's CPU flags (from /proc/cpuinfo) and compiler flags, widest first."""
COMMON_FLAGS = ["-O3", "-ffp-contract=fast", "-fopenmp", "-w"]
"""-ffp-contract=fast: products and sums fuse into FMA instructions (ISO C++ mode forbids it);
-fopenmp: `at::parallel_for` runs on torch's threads (without it, on one)."""


def runnable_builds() -> list[str]:
    """The builds this CPU can run, widest first (`generic` runs everywhere)."""
    flags = cpu_flags()
    return [name for name, (needed, _) in BUILDS.items() if all(flag in flags for flag in needed)]


def build_for_cpu() -> str:
    """The build this CPU runs best (`CHATAPP_BLOCK_BUILD` names another)."""
    chosen = os.environ.get("CHATAPP_BLOCK_BUILD")
    runnable = runnable_builds()
    return chosen if chosen in runnable else runnable[0]


class _State:
    lock = threading.Lock()
    failures: dict[str, str] = {}


@functools.cache
def _namespace(build: str):
    return getattr(torch.ops, f"chatapp_blocks_{build}")


def load(build: str) -> object | None:
    """The operators of `build` (`block_linear`, `block_dequantize`, `block_rows`,
    `decode_layers`, `top_k`, `kept_ids`, `raw_summary`, `choose_token`), compiled first when needed (about 20 s, once), or None
    when it cannot be built here."""
    with _State.lock:
        if build in _State.failures:
            return None
        namespace = f"chatapp_blocks_{build}"
        if _is_loaded(build):
            return _namespace(build)
        try:
            _compile(build, namespace)
        except Exception as error:  # noqa: BLE001 - any failure means: compute in plain torch
            message = str(error).strip().splitlines()
            _State.failures[build] = message[-1][:300] if message else type(error).__name__
            log.info("block kernel %s not available: %s", build, _State.failures[build])
            return None
        return _namespace(build)


def _build_folder(build: str) -> Path:
    """Where `build` of these very sources is compiled: named by their key (`_build_key`) as well,
    so a checkout with other sources never rebuilds a library in place while another process
    loads it (the stamp shortcut of `_compile` takes no lock)."""
    return kernels_dir() / f"blocks-{build}-torch{torch.__version__.split('+')[0]}-{_build_key(build)[:12]}"


def _build_key(build: str) -> str:
    """What a build is made from: its sources, headers and flags (`_compile` writes it beside a
    finished build as `BUILD_STAMP`)."""
    content = b"".join(path.read_bytes() for path in [*SOURCES, HEADER, STEPS_HEADER, ATTENTION_HEADER, EXP_HEADER, ROWS_HEADER])
    return hashlib.sha256(content + " ".join([*COMMON_FLAGS, *BUILDS[build][1]]).encode()).hexdigest()


def built_ops() -> object | None:
    """`ops()` where this CPU's build was compiled before from these very sources (loading it
    takes about 0.2 s), else None, compiling nothing: a model in GGUF blocks compiles it on its
    first load, in the foreground. (A background compile could be cut off when the process ends,
    and its lock file then stalls every later build.)"""
    build = build_for_cpu()
    try:
        stamp = (_build_folder(build) / BUILD_STAMP).read_text(encoding="ascii")
    except OSError:
        return None
    return ops() if stamp == _build_key(build) else None


def _remove_stale_lock(folder: Path) -> None:
    """Remove the lock file of a build that was killed (torch's cpp_extension waits for it without
    end): one older than `STALE_LOCK_SECONDS`."""
    lock = folder / "lock"
    with contextlib.suppress(OSError):
        if time.time() - lock.stat().st_mtime > STALE_LOCK_SECONDS:
            lock.unlink()
            log.warning("removed %s, left by a block kernel build that did not finish", lock)


def _compile(build: str, namespace: str) -> None:
    folder = _build_folder(build)
    key = _build_key(build)
    library = folder / f"{namespace}.so"
    with contextlib.suppress(OSError):
        if (folder / BUILD_STAMP).read_text(encoding="ascii") == key and library.is_file():
            # built before from these very sources and flags: loaded as it is, without importing
            # cpp_extension (and setuptools: 3 MiB of a process's memory)
            torch.ops.load_library(str(library))
            log.info("block kernel %s loaded from %s", build, folder)
            _tidy(folder)
            return
    from torch.utils import cpp_extension

    _ninja_on_path()
    folder.mkdir(parents=True, exist_ok=True)
    _remove_stale_lock(folder)
    # cpp_extension rebuilds when a source or a flag changes; the key as a flag makes a header count too
    cpp_extension.load(
        name=namespace, sources=[str(source) for source in SOURCES], build_directory=str(folder), is_python_module=False,
        extra_cflags=[*COMMON_FLAGS, *BUILDS[build][1], f"-DBLOCKS_NAMESPACE={namespace}",
                      f"-DBLOCK_DOT_DIGEST={key[:16]}"],
        extra_ldflags=["-fopenmp"], verbose=False,
    )
    with contextlib.suppress(OSError):
        (folder / BUILD_STAMP).write_text(key, encoding="ascii")
    log.info("block kernel %s loaded from %s", build, folder)
    _tidy(folder)


def _tidy(folder: Path) -> None:
    """Mark the build in `folder` used, and remove the builds nothing used for a long time (of
    other sources, torch versions or instruction sets: `chatapp.support.stale_files.remove_unused`)."""
    for old in remove_unused(folder.parent, "blocks-*", keep=folder):
        log.info("removed %s, a build that nothing used for a long time", old)


def _ninja_on_path() -> None:
    """Put the `ninja` package's program on PATH (an unactivated virtual environment's bin
    folder is not there, and cpp_extension runs `ninja` by name)."""
    try:
        import ninja
    except ImportError:
        return
    folder = getattr(ninja, "BIN_DIR", None)
    if folder and folder not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = folder + os.pathsep + os.environ.get("PATH", "")


def failure(build: str) -> str | None:
    """Why `build` could not be loaded, once tried."""
    return _State.failures.get(build)


def _is_loaded(build: str) -> bool:
    return hasattr(_namespace(build), LAST_OPERATOR)


def loaded() -> object | None:
    """This CPU's build's operators if this process has loaded them already (nothing is compiled)."""
    build = build_for_cpu()
    return _namespace(build) if _is_loaded(build) else None


def lm_head_steps() -> tuple | None:
    """`(top_k, kept_ids, raw_summary, choose_token)` of the loaded build (`loaded`), for
    `chatapp.lm_head.use_kernels`, or None. `raw_summary` is None but on the AVX512 build: its two
    passes need a vector exponential, which only that build has (elsewhere torch's is faster;
    `choose_token` computes those numbers as the Python step then does)."""
    kernels = loaded()
    if kernels is None:
        return None
    raw_summary = kernels.raw_summary if build_for_cpu() == "avx512" else None
    return kernels.top_k, kernels.kept_ids, raw_summary, kernels.choose_token


def lend_threads(lent: int) -> None:
    """From now on the loaded build's parallel loops run on `lent` threads fewer than torch's (0:
    on all of them; `kernels/parallel_rows.h`), where it is loaded (`chatapp.engine.core_lending`)."""
    kernels = loaded()
    if kernels is not None:
        kernels.lend_threads(lent)


def bind_threads(cpus: list[int]) -> list[int] | None:
    """The loaded build's `bind_threads` (as `int4_kernel.bind_threads`); None where none is loaded."""
    kernels = loaded()
    return list(kernels.bind_threads(cpus)) if kernels is not None else None


def ops() -> object | None:
    """The operators of this CPU's build, or None (turned off by `CHATAPP_BLOCK_KERNEL=0`, or
    no compiler)."""
    if os.environ.get("CHATAPP_BLOCK_KERNEL", "1") == "0":
        return None
    return load(build_for_cpu())
