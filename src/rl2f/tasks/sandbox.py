"""Run untrusted Python (model-written programs) in a separate, resource-limited process.

Model-generated code never runs in the caller's interpreter. Every call starts a fresh one, and
on Linux this module guarantees:

* limits, set inside the child before the program starts: CPU seconds, address space (memory),
  size of any file written, number of processes, open files, no core dumps;
* a wall-clock timeout, after which the child's whole process group is SIGKILLed;
* a scrubbed environment (nothing of ``os.environ`` is passed on, so no secrets) and a private
  working directory, which is also HOME and TMPDIR, removed afterwards;
* when the caller is root (containers, CI machines) the program runs as a throwaway uid that no
  other process uses (one lock per uid). That is what makes the limits real: the kernel ignores
  RLIMIT_NPROC for root, so only an unprivileged uid stops a fork bomb; file permissions stop
  writes everywhere except world-writable directories (/tmp, /var/tmp, /dev/shm, /run/lock),
  and those are swept of the uid's files afterwards; and one ``kill(-1)`` sent from that uid
  kills every process the program left behind, even one that left the process group with
  ``setsid()``;
* no network (and a private System V IPC namespace) where the kernel allows unprivileged user
  namespaces (``unshare --user --map-root-user --net --ipc``), probed once.

The interpreter is ours when the throwaway uid can run it, else a system one of the same
version (pyenv under /root is out of its reach); programs get the standard library only.

Where the machine cannot give both a throwaway uid (the caller is not root) and a network
namespace, :func:`run_python` refuses to run anything (:class:`SandboxUnavailable`, one line
naming what is missing) unless the user allows it explicitly: ``allow_unisolated=True`` or
the environment variable ``RL2F_ALLOW_UNISOLATED_CODE=1``. Running model code with network
access and as the caller must be a decision, never a silent fallback.

Not guaranteed: the program can read world-readable files (system files, this repository);
while it runs it can fill world-writable directories (each file is capped by ``max_file_mb``);
memory is capped per process, so a run may use up to ``max_processes * memory_mb``. Without
root there is no uid to drop to: the process limit then counts all of the caller's processes
(outside a user namespace), a process that calls ``setsid()`` escapes the final kill, and files
written to /tmp stay. :func:`isolation` says which guarantees hold on this machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import math
import os
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal

from rl2f.errors import UserError

log = logging.getLogger(__name__)

# Set to 1 to run model-written code without full isolation (see the module docstring).
ALLOW_UNISOLATED_ENV = "RL2F_ALLOW_UNISOLATED_CODE"

Status = Literal["ok", "error", "timeout", "memory", "killed"]

MAIN_FILE = "main.py"
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"

# Throwaway uids: far above any uid a distribution or container runtime hands out. The pool
# only has to be larger than the number of sandboxes running at once on one machine; keeping it
# small bounds the number of lock files.
_UID_BASE = 1_500_000_000
_UID_POOL = 4096
_PROBE_UID = _UID_BASE - 1
# New user (mapped to root inside), network (no interfaces but a down loopback) and System V
# IPC namespaces: no network, and no shared memory segments that outlive the run.
_NAMESPACES = ("--user", "--map-root-user", "--net", "--ipc")
_WORLD_WRITABLE_ROOTS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
_POLL_S = 0.05
_DRAIN_S = 1.0
_READ_CHUNK = 65536

# Runs first in the child (inside the namespaces, as the sandbox uid) and then replaces itself
# with the real interpreter on main.py, so the program's tracebacks show only its own frames.
# Limits are set here rather than in a preexec_fn, which is unsafe when the caller has threads.
_BOOTSTRAP = """\
import os, resource, sys
cpu_s, memory_b, file_b, processes, files = (int(arg) for arg in sys.argv[1:6])
for which, soft, hard in (
    (resource.RLIMIT_CPU, cpu_s, cpu_s + 1),
    (resource.RLIMIT_AS, memory_b, memory_b),
    (resource.RLIMIT_FSIZE, file_b, file_b),
    (resource.RLIMIT_NPROC, processes, processes),
    (resource.RLIMIT_NOFILE, files, files),
    (resource.RLIMIT_CORE, 0, 0),
):
    ceiling = resource.getrlimit(which)[1]
    if ceiling != resource.RLIM_INFINITY:
        soft, hard = min(soft, ceiling), min(hard, ceiling)
    resource.setrlimit(which, (soft, hard))
os.execv(sys.argv[6], sys.argv[6:])
"""

# Only ever executed as a throwaway uid: kill(-1) then reaches exactly that uid's processes.
_KILL_ALL_OF_THIS_UID = """\
import os, signal, sys
expected = int(sys.argv[1])
if os.getuid() != expected or expected == 0:
    sys.exit("refusing to kill(-1) as uid %d" % os.getuid())
try:
    os.kill(-1, signal.SIGKILL)
except ProcessLookupError:
    pass
"""

_MEMORY_SIGNS = ("Cannot allocate memory", "std::bad_alloc", "out of memory")


class SandboxUnavailable(UserError):
    """This machine cannot isolate model-written code and nobody allowed running it anyway."""


@dataclass(frozen=True)
class SandboxResult:
    status: Status
    stdout: str
    stderr: str
    returncode: int  # negative: killed by that signal (as subprocess reports it)
    duration_s: float
    # True when stdout or stderr exceeded the cap; the middle was dropped, head and tail kept.
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class Isolation:
    """What this machine lets the sandbox enforce (probed once per process)."""

    python: str
    throwaway_uids: bool
    unshare: str | None

    @property
    def network_isolated(self) -> bool:
        return self.unshare is not None

    @property
    def missing(self) -> list[str]:
        """The isolation this machine lacks, each in a few words (empty: fully isolated)."""
        lacks = []
        if not self.throwaway_uids:
            lacks.append("no throwaway uid (the sandbox must start as root to drop to one)")
        if not self.network_isolated:
            lacks.append("no network namespace (`unshare --user --net` is refused)")
        return lacks

    @property
    def uid_range(self) -> range | None:
        """The uids sandboxed programs run as (None: they run as the caller)."""
        return range(_UID_BASE, _UID_BASE + _UID_POOL) if self.throwaway_uids else None


def run_python(
    code: str,
    timeout_s: float,
    memory_mb: int,
    *,
    stdin: str | bytes | None = None,
    files: Mapping[str, str | bytes] | None = None,
    max_processes: int = 8,
    max_file_mb: int = 16,
    output_cap_bytes: int = 64 * 1024,
    allow_unisolated: bool | None = None,
) -> SandboxResult:
    """Run ``code`` as ``main.py`` in a fresh sandboxed interpreter (stdlib only, no site).

    ``files`` are extra files (relative paths) placed next to main.py; ``stdin`` is fed to the
    program and never written inside its directory. ``max_processes`` counts threads too.
    ``allow_unisolated`` (None: read ``RL2F_ALLOW_UNISOLATED_CODE``) lets the program run on a
    machine that cannot fully isolate it; otherwise that raises :class:`SandboxUnavailable`.
    """
    _check_limits(timeout_s, memory_mb, max_processes, max_file_mb, output_cap_bytes)
    extra_files = dict(files or {})
    if MAIN_FILE in extra_files:
        raise ValueError(f"files may not replace {MAIN_FILE}")
    iso = isolation()
    require_isolation(iso, allow_unisolated)
    limits = (
        math.ceil(timeout_s) + 1,  # CPU seconds: a backstop, the wall clock normally fires first
        memory_mb << 20,
        max_file_mb << 20,
        max_processes,
        256,
    )
    identity = _throwaway_user() if iso.throwaway_uids else contextlib.nullcontext(None)
    with identity as user, _private_dir(user) as workdir:
        _write_files(workdir, {MAIN_FILE: code, **extra_files}, user)
        started = time.monotonic()
        with _stdin_source(stdin) as stdin_source:
            proc = subprocess.Popen(
                _command(iso, limits),
                cwd=workdir,
                env=_clean_env(workdir),
                stdin=stdin_source,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                **_identity_kwargs(user),
            )
        with _PipeReader(proc, output_cap_bytes) as reader:
            try:
                timed_out = reader.read_until_exit(deadline=started + timeout_s)
            finally:
                # Processes it left behind would keep the pipes open: kill them, then drain.
                _kill_everything(proc, user)
                reader.drain()
                returncode = proc.wait()
        duration_s = time.monotonic() - started
    stdout, stderr = reader.stdout, reader.stderr
    stderr_text = stderr.text()
    return SandboxResult(
        status=_classify(returncode, timed_out, stderr_text),
        stdout=stdout.text(),
        stderr=stderr_text,
        returncode=returncode,
        duration_s=duration_s,
        truncated=stdout.dropped > 0 or stderr.dropped > 0,
    )


@functools.cache
def isolation() -> Isolation:
    """Probe once which interpreter the sandbox can run and which isolation the OS allows."""
    base = _base_dir()
    as_root = os.geteuid() == 0
    probe_uid = _PROBE_UID if as_root else None
    python = next((p for p in _interpreter_candidates() if _runs(base, probe_uid, [p])), None)
    throwaway_uids = as_root and python is not None
    if python is None:
        if as_root:
            log.warning("sandbox: no interpreter runs as an unprivileged uid; running as root")
        python = os.path.realpath(sys.executable)
        probe_uid = None
    unshare = shutil.which("unshare", path=SANDBOX_PATH)
    if unshare is not None and not _runs(base, probe_uid, [unshare, *_NAMESPACES, "--", python]):
        unshare = None
    if unshare is None:
        log.info("sandbox: user/network namespaces unavailable on this machine")
    return Isolation(python=python, throwaway_uids=throwaway_uids, unshare=unshare)


def unisolated_allowed() -> bool:
    """Whether the user set RL2F_ALLOW_UNISOLATED_CODE=1 (or true/yes)."""
    return os.environ.get(ALLOW_UNISOLATED_ENV, "").strip().lower() in ("1", "true", "yes")


def require_isolation(iso: Isolation, allow_unisolated: bool | None = None) -> None:
    """Raise SandboxUnavailable when ``iso`` lacks a guarantee and running without it was not
    allowed; when it was, warn once per missing guarantee."""
    if not iso.missing:
        return
    allowed = unisolated_allowed() if allow_unisolated is None else allow_unisolated
    if not allowed:
        raise SandboxUnavailable(
            "sandbox: refusing to run model-written code without isolation: "
            + "; ".join(iso.missing)
            + f". Run as root on a kernel that allows user namespaces, or set "
            f"{ALLOW_UNISOLATED_ENV}=1 to run it anyway (with network access, as your own user)"
        )
    _warn_unisolated(tuple(iso.missing))


@functools.cache
def _warn_unisolated(missing: tuple[str, ...]) -> None:
    log.warning("sandbox: running model-written code without isolation: %s", "; ".join(missing))


# ---------------------------------------------------------------- process and identity


def _command(iso: Isolation, limits: tuple[int, ...]) -> list[str]:
    prefix = [iso.unshare, *_NAMESPACES, "--"] if iso.unshare else []
    program = [iso.python, "-S", "-s", "-B", "-u", "-X", "utf8", MAIN_FILE]
    return [*prefix, iso.python, "-I", "-S", "-c", _BOOTSTRAP, *map(str, limits), *program]


def _clean_env(workdir: Path) -> dict[str, str]:
    return {
        "PATH": SANDBOX_PATH,
        "HOME": str(workdir),
        "TMPDIR": str(workdir),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "PYTHONIOENCODING": "utf-8",
    }


def _identity_kwargs(who: _ThrowawayUser | int | None) -> dict[str, Any]:
    if who is None:
        return {}
    uid = who.uid if isinstance(who, _ThrowawayUser) else who
    return {"user": uid, "group": uid, "extra_groups": []}


def _interpreter_candidates() -> list[str]:
    """Our own interpreter first; a system one when ours lives where a throwaway uid cannot
    read it (e.g. pyenv under /root). The sandbox needs the standard library only."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    found = [
        os.path.realpath(sys.executable),
        os.path.realpath(getattr(sys, "_base_executable", sys.executable)),
        shutil.which(version, path=SANDBOX_PATH),
        shutil.which("python3", path=SANDBOX_PATH),
    ]
    return list(dict.fromkeys(path for path in found if path))


def _runs(cwd: Path, uid: int | None, prefix: list[str]) -> bool:
    try:
        done = subprocess.run(
            [*prefix, "-I", "-S", "-c", "pass"],
            cwd=cwd,
            env=_clean_env(cwd),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
            **_identity_kwargs(uid),
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("sandbox probe %s failed: %s", prefix, exc)
        return False
    return done.returncode == 0


class _ThrowawayUser:
    """One uid of the pool, held under a lock for one run. The lock file remembers whether the
    last holder killed everything it ran, so leftovers of a crashed run die before reuse."""

    def __init__(self, uid: int, lock_fd: int) -> None:
        self.uid = uid
        self._lock_fd = lock_fd
        self.killed_all = False

    def kill_all(self) -> None:
        _kill_all_of_uid(self.uid)
        self.killed_all = True

    def acquire(self) -> None:
        if os.pread(self._lock_fd, 5, 0) != b"clean":
            _kill_all_of_uid(self.uid)
        os.pwrite(self._lock_fd, b"dirty", 0)

    def release(self) -> None:
        for root in {*_WORLD_WRITABLE_ROOTS, tempfile.gettempdir()}:
            _remove_owned_by(self.uid, Path(root), depth=8)
        if self.killed_all:
            os.pwrite(self._lock_fd, b"clean", 0)
        os.close(self._lock_fd)


@contextlib.contextmanager
def _throwaway_user() -> Iterator[_ThrowawayUser]:
    locks = _base_dir() / "locks"
    for _ in range(64):
        uid = _UID_BASE + secrets.randbelow(_UID_POOL)
        lock_fd = os.open(locks / str(uid), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            continue
        user = _ThrowawayUser(uid, lock_fd)
        try:
            user.acquire()
            yield user
        finally:
            user.release()
        return
    raise RuntimeError(f"sandbox: no free uid in a pool of {_UID_POOL}")


def _kill_all_of_uid(uid: int) -> None:
    if not _UID_BASE <= uid < _UID_BASE + _UID_POOL:
        raise ValueError(f"refusing to kill all processes of uid {uid}")
    subprocess.run(
        [isolation().python, "-I", "-S", "-c", _KILL_ALL_OF_THIS_UID, str(uid)],
        cwd="/",
        env={"PATH": SANDBOX_PATH},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
        timeout=30,
        **_identity_kwargs(uid),
    )


def _kill_everything(proc: subprocess.Popen[bytes], user: _ThrowawayUser | None) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if user is not None:
        user.kill_all()


def _remove_owned_by(uid: int, directory: Path, depth: int) -> None:
    """Delete what ``uid`` created in a world-writable directory, descending only into other
    world-writable directories (the only places it could have written)."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if info.st_uid == uid:
            if stat.S_ISDIR(info.st_mode):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
        elif depth > 1 and stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_IWOTH:
            _remove_owned_by(uid, Path(entry.path), depth - 1)


# ---------------------------------------------------------------- files


@functools.cache
def _base_dir() -> Path:
    """Parent of the private run directories: ours, traversable by the sandbox uids but
    listable by nobody else, and never a directory someone else planted."""
    base = Path(tempfile.gettempdir()) / f"rl2f-sandbox-{os.getuid()}"
    base.mkdir(mode=0o711, exist_ok=True)
    info = base.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise RuntimeError(f"sandbox: {base} exists and is not a directory owned by us")
    base.chmod(0o711)
    (base / "locks").mkdir(mode=0o700, exist_ok=True)
    return base


@contextlib.contextmanager
def _private_dir(user: _ThrowawayUser | None) -> Iterator[Path]:
    workdir = Path(tempfile.mkdtemp(prefix="run-", dir=_base_dir()))
    try:
        if user is not None:
            os.chown(workdir, user.uid, user.uid)
        yield workdir
    finally:
        shutil.rmtree(workdir, onerror=_unlock_and_retry)


def _unlock_and_retry(function: Callable[[str], Any], path: str, _exc: Any) -> None:
    """Without root, a program can chmod its own directories to 0; give them back first."""
    try:
        os.chmod(os.path.dirname(path), 0o700)
        function(path)
    except OSError as exc:
        log.warning("sandbox: could not remove %s: %s", path, exc)


def _write_files(
    workdir: Path, files: Mapping[str, str | bytes], user: _ThrowawayUser | None
) -> None:
    for name, content in files.items():
        relative = PurePosixPath(name)
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            raise ValueError(f"sandbox file name must be a relative path inside its dir: {name!r}")
        target = workdir.joinpath(*relative.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content.encode() if isinstance(content, str) else content)
        if user is not None:
            for path in (target, *target.relative_to(workdir).parents):
                os.chown(workdir / path, user.uid, user.uid)


@contextlib.contextmanager
def _stdin_source(data: str | bytes | None) -> Iterator[IO[bytes] | int]:
    """An unlinked temp file: any size without a writer thread, and nothing on disk for the
    program to find."""
    if data is None:
        yield subprocess.DEVNULL
        return
    with tempfile.TemporaryFile() as handle:
        handle.write(data.encode() if isinstance(data, str) else data)
        handle.seek(0)
        yield handle


# ---------------------------------------------------------------- output and status


class _HeadTail:
    """Keeps the first and last half of a stream: a flood cannot exhaust our memory, and the
    end (tracebacks, reports) survives."""

    def __init__(self, cap_bytes: int) -> None:
        self.half = cap_bytes // 2
        self.head = bytearray()
        self.tail = bytearray()
        self.dropped = 0

    def feed(self, chunk: bytes) -> None:
        room = self.half - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        self.tail += chunk
        excess = len(self.tail) - self.half
        if excess > 0:
            self.dropped += excess
            del self.tail[:excess]

    def text(self) -> str:
        middle = f"\n[... {self.dropped} bytes truncated ...]\n" if self.dropped else ""
        return self.head.decode(errors="replace") + middle + self.tail.decode(errors="replace")


class _PipeReader:
    """Reads stdout and stderr together without threads, so neither pipe can fill up and
    block the program while we wait on the other."""

    def __init__(self, proc: subprocess.Popen[bytes], cap_bytes: int) -> None:
        assert proc.stdout is not None and proc.stderr is not None, "both pipes are needed"
        self.proc = proc
        self._pipes = (proc.stdout, proc.stderr)
        self.stdout = _HeadTail(cap_bytes)
        self.stderr = _HeadTail(cap_bytes)
        self._selector = selectors.DefaultSelector()
        self._selector.register(proc.stdout, selectors.EVENT_READ, self.stdout)
        self._selector.register(proc.stderr, selectors.EVENT_READ, self.stderr)

    def __enter__(self) -> _PipeReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._selector.close()
        for pipe in self._pipes:
            pipe.close()

    def read_until_exit(self, deadline: float) -> bool:
        """Return True when the deadline passed with the program still running."""
        while self.proc.poll() is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            if self._selector.get_map():
                self._read_ready(min(remaining, _POLL_S))
            else:  # the program closed both pipes but still runs
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(min(remaining, _POLL_S))
        return False

    def drain(self) -> None:
        """Read what is left once every writer is dead (bounded: a writer we could not kill
        must not hang us)."""
        until = time.monotonic() + _DRAIN_S
        while self._selector.get_map() and time.monotonic() < until:
            self._read_ready(_POLL_S)

    def _read_ready(self, timeout: float) -> None:
        for key, _ in self._selector.select(timeout):
            chunk = os.read(key.fd, _READ_CHUNK)
            if chunk:
                key.data.feed(chunk)
            else:
                self._selector.unregister(key.fileobj)


def _classify(returncode: int, timed_out: bool, stderr: str) -> Status:
    if timed_out:
        return "timeout"
    if returncode == 0:
        return "ok"
    if _ran_out_of_memory(stderr):
        return "memory"
    if returncode < 0:
        return "timeout" if -returncode == signal.SIGXCPU else "killed"
    return "error"


def _ran_out_of_memory(stderr: str) -> bool:
    tail = stderr[-4000:]
    lines = [line for line in tail.splitlines() if line.strip()]
    if lines and lines[-1].startswith("MemoryError"):
        return True
    return any(sign in tail for sign in _MEMORY_SIGNS)


def _check_limits(
    timeout_s: float, memory_mb: int, max_processes: int, max_file_mb: int, output_cap: int
) -> None:
    if not (math.isfinite(timeout_s) and timeout_s > 0):
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    if memory_mb < 32:
        raise ValueError(
            f"memory_mb must be at least 32 (the interpreter needs it), got {memory_mb}"
        )
    if max_processes < 1 or max_file_mb < 0 or output_cap < 2:
        raise ValueError("max_processes >= 1, max_file_mb >= 0 and output_cap_bytes >= 2")
