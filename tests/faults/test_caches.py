"""Damaged and abandoned caches (issue #20): chatapp checks what it reads back from its cache
folder, rebuilds what is damaged with one line saying so, and removes what dead processes left.

Every test works on a copy of the user cache in a temporary folder (`XDG_CACHE_HOME`, which
platformdirs honours on Linux) and damages only that copy: other tests read the real one.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chatapp.loading.gguf_files import converted_dir, default_gguf_path
from chatapp.runtime import int4_kernel
from tests.test_stale_files import aged

pytestmark = pytest.mark.model

ASK_TIMEOUT = 240
"""Seconds one `chatapp ask` may take (a conversion takes half a minute, more on a busy machine)."""
INT4_CACHE = "chatapp-int4-float32.safetensors"
"""The int4 copy `chatapp ask` reads at a warm start (float32 body)."""
DAMAGED_KERNEL = "was damaged; rebuilding it"
"""What chatapp logs once about a damaged kernel library."""
DAMAGED_MODEL = "was damaged; converting it again"
"""What chatapp says once about a damaged converted model."""
SIGBUS_EXIT = (-7, 135)
"""How a process killed by SIGBUS ends (as subprocess sees it, or through a shell)."""
HOUR = 3600
DAY = 24 * HOUR
SLOW_COMPILE_SECONDS = 300
"""How long the stand-in compiler (`slow_compiler`) runs."""
STAND_IN_CONVERTER = """
import shutil, sys
from pathlib import Path

from chatapp.loading import model_source

INTACT = Path(sys.argv.pop(1))


def convert(gguf, target, progress, weights=True):  # the real conversion takes half a minute to two
    progress(f"converting {gguf.name} (a copy of an intact conversion)")
    shutil.copytree(INTACT, target, ignore=shutil.ignore_patterns("chatapp-int4-*"))


model_source.convert_gguf = convert
from chatapp.cli.main import main

sys.exit(main(sys.argv[1:]))
"""
"""Runs `chatapp ask` with the conversion replaced by a copy of the intact converted folder."""


def dead_pid() -> int:
    """The id of a process that has ended (a fresh one is not reused within a test)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def real_cache() -> tuple[Path, Path]:
    """The real cache's converted default model and kernel library, warmed up first if needed.

    Read only: tests copy what they need. Computed before any test points the cache elsewhere.
    """
    folder = converted_dir(default_gguf_path())
    library = int4_kernel._library_path()
    if not ((folder / INT4_CACHE).is_file() and (folder / "config.json").is_file()):
        subprocess.run([sys.executable, "-m", "chatapp", "ask", "--max-new-tokens", "1", "Hi"],
                       capture_output=True, timeout=ASK_TIMEOUT, check=False)
    if int4_kernel.wanted() is None:
        int4_kernel.load()  # (the session fixture has built it already)
    return folder, library


@pytest.fixture(scope="module")
def real() -> tuple[Path, Path]:
    return real_cache()


def temp_cache(root: Path, real: tuple[Path, Path], *, skip: tuple[str, ...] = (), kernel: bool = True) -> Path:
    """A copy of the real cache under `root` (to be `XDG_CACHE_HOME`): the converted default
    model (less the files named in `skip`), its GGUF type memo and, with `kernel`, the kernel
    library and its sidecar. Returns the copy's converted model folder."""
    folder, library = real
    models = root / "chatapp" / "models"
    copy = models / folder.name
    copy.mkdir(parents=True)
    for file in folder.iterdir():
        if file.is_file() and file.name not in skip:
            shutil.copyfile(file, copy / file.name)
    for memo in folder.parent.glob(f"{folder.name}.*"):
        shutil.copyfile(memo, models / memo.name)
    kernels = root / "chatapp" / "kernels"
    kernels.mkdir(parents=True)
    if kernel:
        for file in library.parent.glob(f"{library.name}*"):  # the library and its sidecar, if any
            shutil.copyfile(file, kernels / file.name)
    return copy


def ask(cache: Path, *args: str, env: dict[str, str] | None = None, driver: list[str] | None = None) -> subprocess.CompletedProcess:
    """`chatapp ask` with the user cache at `cache` (PYTHONPATH and the rest passed through), run
    by `driver` (a script and its first arguments) instead of `python -m chatapp` if given."""
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), **(env or {})}
    command = [sys.executable, *(driver or ["-m", "chatapp"]), "ask", "--temperature", "0", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=ASK_TIMEOUT, env=env, check=False)


def slow_compiler(folder: Path) -> Path:
    """A stand-in C++ compiler (for `CXX`) that takes five minutes and uses no CPU meanwhile, so a
    compile is surely in progress when `chatapp ask` ends. Its path marks its processes."""
    script = folder / "slow-cxx"
    # One-second sleeps: once the script is killed, nothing it started outlives it long.
    script.write_text(
        f"#!/bin/sh\ni=0\nwhile [ $i -lt {SLOW_COMPILE_SECONDS} ]; do sleep 1; i=$((i + 1)); done\n", encoding="ascii"
    )
    script.chmod(0o755)
    return script


def processes_running(marker: str) -> list[str]:
    """The command lines of this machine's processes that contain `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in line:
                found.append(line)
    return found


def stop_processes(marker: str) -> None:
    """Kill this machine's processes whose command line contains `marker` (the stand-in compilers
    an old chatapp leaves running)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    os.kill(int(entry.name), signal.SIGKILL)
            except OSError:
                continue


@pytest.fixture
def stand_in_compiler(tmp_path):
    """`slow_compiler` in `tmp_path`, whose processes are stopped after the test whatever happens."""
    compiler = slow_compiler(tmp_path)
    yield compiler
    stop_processes(str(compiler))


def truncate(path: Path, keep: int | None = None) -> None:
    """Cut `path` to `keep` bytes (default: half of it), as a full disk or a killed copy leaves it."""
    os.truncate(path, path.stat().st_size // 2 if keep is None else keep)


# --- the kernel library ------------------------------------------------------------------------


@pytest.mark.skipif(int4_kernel.wanted() is not None, reason="the int4 kernel is not used on this machine")
def test_a_truncated_kernel_is_not_loaded_but_deleted_with_one_warning(tmp_path, real, stand_in_compiler):
    temp_cache(tmp_path, real)
    library = tmp_path / "chatapp" / "kernels" / real[1].name
    truncate(library)
    stale = tmp_path / "chatapp" / "kernels" / f".building-{dead_pid()}-abcd1234"  # a killed compile's
    stale.mkdir()
    (stale / real[1].name).write_bytes(b"half")
    done = ask(tmp_path, "--max-new-tokens", "1", "Hi", env={"CXX": str(stand_in_compiler)})
    assert done.returncode not in SIGBUS_EXIT, "the truncated library was loaded (SIGBUS)"
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    assert done.stderr.count(DAMAGED_KERNEL) == 1, done.stderr
    assert "Traceback" not in done.stderr
    # the damaged file is gone (the rebuild it started was stopped at exit), and the stale folder
    assert not library.exists()
    assert not stale.exists()
    assert not processes_running(str(stand_in_compiler))


@pytest.mark.skipif(int4_kernel.wanted() is not None, reason="the int4 kernel is not used on this machine")
@pytest.mark.parametrize("damage", ["truncated", "same size", "no sidecar"])
def test_built_never_claims_a_damaged_kernel_and_load_rebuilds_it(tmp_path, real, monkeypatch, caplog, damage):
    _, library = real
    copy = tmp_path / library.name
    shutil.copyfile(library, copy)
    sidecar = library.with_name(library.name + ".sha256")
    if sidecar.exists():
        shutil.copyfile(sidecar, tmp_path / sidecar.name)
    monkeypatch.setattr(int4_kernel, "_library_path", lambda: copy)
    monkeypatch.setattr(int4_kernel._State, "loaded", False)  # as in a fresh process
    monkeypatch.setattr(int4_kernel._State, "error", None)
    assert int4_kernel.built(), "an intact library with its sidecar counts as built"
    if damage == "truncated":
        truncate(copy)
    elif damage == "same size":
        data = bytearray(copy.read_bytes())
        data[len(data) // 2] ^= 0xFF
        copy.write_bytes(bytes(data))
    else:
        (tmp_path / sidecar.name).unlink()
    assert not int4_kernel.built()

    builds, loads = [], []

    def fake_build(target: Path) -> None:  # a compile, without its 10+ s
        builds.append(target)
        assert not target.exists(), "the damaged library is deleted before the rebuild"
        shutil.copyfile(library, target)
        shutil.copyfile(sidecar, target.with_name(target.name + ".sha256"))

    monkeypatch.setattr(int4_kernel, "_build", fake_build)
    monkeypatch.setattr(int4_kernel.torch.ops, "load_library", loads.append)  # loaded once already
    with caplog.at_level(logging.WARNING, logger="chatapp.runtime.int4_kernel"):
        assert int4_kernel.load()
    assert builds == [copy] and loads == [str(copy)]
    assert [r.getMessage() for r in caplog.records] == [f"the int4 kernel in {copy} {DAMAGED_KERNEL}"]


# --- the converted model and its int4 copy -----------------------------------------------------


def test_a_truncated_converted_model_is_converted_again_with_one_line(tmp_path, real):
    """The conversion itself is a stand-in (a copy): the real one takes half a minute to two."""
    folder = temp_cache(tmp_path, real, skip=(INT4_CACHE,))  # so the first load reads model.safetensors
    weights = folder / "model.safetensors"
    truncate(weights, keep=1 << 20)
    # Not beside the cache: a script's folder comes first on sys.path, and the cache's "chatapp"
    # folder there would shadow the package.
    (tmp_path / "driver").mkdir()
    driver = tmp_path / "driver" / "stand_in_converter.py"
    driver.write_text(STAND_IN_CONVERTER, encoding="utf-8")
    done = ask(tmp_path, "--max-new-tokens", "2", "Hi", driver=[str(driver), str(real[0])])
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip()
    assert "Traceback" not in done.stderr and "Error" not in done.stderr, done.stderr[-3000:]
    assert done.stderr.count(DAMAGED_MODEL) == 1, done.stderr
    assert len(done.stderr.strip().splitlines()) == 2, done.stderr  # that line, and "converting ..."
    assert weights.stat().st_size == (real[0] / "model.safetensors").stat().st_size
    assert (folder / INT4_CACHE).is_file(), "the int4 copy is packed and saved again"
    assert not list(folder.parent.glob(".converting-*")), "no staging folder is left behind"


def test_a_converted_model_that_fails_to_load_is_converted_again(tmp_path, real, monkeypatch, caplog):
    """Damage of the same size (the manifest's sizes still match): the failing load itself
    sends the copy back for conversion (here a stand-in that copies the intact copy)."""
    from chatapp.loading import model_source
    from chatapp.loading import models as loading

    folder = temp_cache(tmp_path, real, skip=(INT4_CACHE,))
    weights = folder / "model.safetensors"
    with open(weights, "r+b") as handle:
        handle.write(b"\xff" * 16)  # the header's length and start: unreadable, same size
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    conversions = []

    def fake_convert(gguf: Path, target: Path, progress, weights: bool = True) -> None:
        conversions.append(target)
        progress(f"converting {gguf.name}")
        shutil.copytree(real[0], target, ignore=shutil.ignore_patterns(INT4_CACHE))

    monkeypatch.setattr(model_source, "convert_gguf", fake_convert)
    messages: list[str] = []
    with caplog.at_level(logging.WARNING, logger="chatapp.loading.model_source"):
        loaded = loading.load_model("default", device="cpu", dtype="float32", quantize="none", progress=messages.append)
    assert loaded.model is not None
    assert conversions == [folder]
    damaged = [m for m in messages if DAMAGED_MODEL in m]
    assert len(damaged) == 1 and default_gguf_path().name in damaged[0]
    assert [r.getMessage() for r in caplog.records] == damaged


@pytest.mark.parametrize("damage", ["truncated", "garbled header"])
def test_a_damaged_int4_copy_is_ignored_and_written_again(tmp_path, real, monkeypatch, caplog, damage):
    from chatapp.loading.models import load_model

    folder = temp_cache(tmp_path, real)
    cache = folder / INT4_CACHE
    size = cache.stat().st_size
    if damage == "truncated":
        truncate(cache)  # safetensors refuses a file its header does not cover: no SIGBUS from the mmap
    else:
        with open(cache, "r+b") as handle:
            handle.write(b"\x00" * 8)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="chatapp"):
        loaded = load_model("default", device="cpu", dtype="float32")
    assert loaded.info.quantization == "int4"
    assert cache.stat().st_size == size  # packed again and saved whole
    assert any("int4 copy" in r.getMessage() and "damaged" in r.getMessage() for r in caplog.records)


def test_copies_of_models_nobody_opened_for_two_weeks_are_removed(tmp_path, real):
    copy = temp_cache(tmp_path, real)
    models = copy.parent
    gone = models / "deleted-model-0123456789ab"  # the whole copy of a file since deleted
    gone.mkdir()
    (gone / "model.safetensors").write_bytes(b"w" * 4096)
    gone_memo = models / f"{gone.name}.gguf-facts.json"
    gone_memo.write_text("{}")
    lately = models / "other-model-ba9876543210-header"  # opened yesterday
    lately.mkdir()
    for path in (gone / "model.safetensors", gone, gone_memo, copy, *models.glob(f"{copy.name}.*")):
        aged(path, 15 * DAY)  # the default model's copy too: last opened as long ago
    aged(lately, DAY)
    done = ask(tmp_path, "--max-new-tokens", "1", "Hi")
    assert done.returncode == 0, done.stderr
    assert not gone.exists() and not gone_memo.exists()
    assert lately.exists() and (copy / "config.json").is_file() and list(models.glob(f"{copy.name}.*"))
    assert time.time() - copy.stat().st_mtime < 600  # the copy in use is marked used


# --- what dead processes leave behind ----------------------------------------------------------


def test_staging_left_by_dead_processes_is_removed_and_live_ones_kept(tmp_path, real, monkeypatch):
    from chatapp.loading.models import load_model

    folder = temp_cache(tmp_path, real)
    models = folder.parent
    dead = models / f".converting-{dead_pid()}-a1b2c3d4"
    live = models / f".converting-{os.getpid()}-e5f6g7h8"
    old_unnamed = models / ".converting-x9y8z7w6"  # an older chatapp's, an hour old
    new_unnamed = models / ".converting-q1w2e3r4"  # could still be running
    for staging in (dead, live, old_unnamed, new_unnamed):
        staging.mkdir()
        (staging / "model.safetensors").write_bytes(b"\0" * 4096)
    old_temp = folder / f".{INT4_CACHE}.k2j3h4g5.tmp"  # a killed save of the int4 copy
    new_temp = folder / f".{INT4_CACHE}.m6n7b8v9.tmp"
    for temp in (old_temp, new_temp):
        temp.write_bytes(b"\0" * 4096)
    hour_ago = time.time() - 2 * HOUR
    for path in (old_unnamed, old_temp):
        os.utime(path, (hour_ago, hour_ago))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    load_model("default", device="cpu", dtype="float32")
    assert not dead.exists() and not old_unnamed.exists() and not old_temp.exists()
    assert live.exists() and new_unnamed.exists() and new_temp.exists()
