"""The sandbox against hostile programs. Everything runs for real: real subprocesses, real
limits, a real TCP server. Each test is bounded by a short sandbox timeout."""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rl2f.tasks.sandbox import isolation, run_python

REPO_ROOT = Path(__file__).resolve().parents[1]

# Prints the uid the program really runs as (inside `unshare -r` it sees itself as root).
PRINT_REAL_UID = """
import os
def real_uid():
    try:
        inside, outside, _ = open("/proc/self/uid_map").read().split()
    except (OSError, ValueError):
        return os.getuid()
    return int(outside) if int(inside) == 0 and os.getuid() == 0 else os.getuid()
print("UID", real_uid(), flush=True)
"""

needs_throwaway_uid = pytest.mark.skipif(
    not isolation().throwaway_uids,
    reason="needs root: only a throwaway uid makes this guarantee (see rl2f.tasks.sandbox)",
)


def live_pids_of(uid: int) -> list[int]:
    """Processes of ``uid`` that are not zombies (a killed orphan is dead once it is a zombie)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        real_uid = int(fields["Uid"].split()[0])
        if real_uid == uid and not fields["State"].strip().startswith(("Z", "X")):
            found.append(int(entry.name))
    return found


def pid_is_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_until(predicate, timeout_s: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def uid_from(stdout: str) -> int:
    return int(next(line for line in stdout.splitlines() if line.startswith("UID")).split()[1])


# ---------------------------------------------------------------- ordinary behaviour


def test_runs_a_program_and_reports_output_and_exit_code() -> None:
    result = run_python(
        "import sys\nprint('to stdout')\nprint('to stderr', file=sys.stderr)\nsys.exit(3)",
        timeout_s=5,
        memory_mb=256,
    )
    assert result.status == "error"
    assert result.returncode == 3
    assert result.stdout == "to stdout\n"
    assert result.stderr == "to stderr\n"
    assert not result.truncated
    assert 0 < result.duration_s < 5

    ok = run_python("print(sum(range(10)))", timeout_s=5, memory_mb=256)
    assert (ok.status, ok.returncode, ok.stdout) == ("ok", 0, "45\n")


def test_stdin_and_extra_files_reach_the_program_and_the_limits_are_set() -> None:
    program = """
import json, os, resource, sys
print(json.dumps({
    "stdin": sys.stdin.read(),
    "file": open("data/input.txt").read(),
    "cwd_is_home": os.getcwd() == os.environ["HOME"] == os.environ["TMPDIR"],
    "cpu": resource.getrlimit(resource.RLIMIT_CPU),
    "as": resource.getrlimit(resource.RLIMIT_AS),
    "nproc": resource.getrlimit(resource.RLIMIT_NPROC),
    "fsize": resource.getrlimit(resource.RLIMIT_FSIZE),
    "core": resource.getrlimit(resource.RLIMIT_CORE),
}))
"""
    result = run_python(
        program,
        timeout_s=3,
        memory_mb=200,
        stdin="line one\nline two\n",
        files={"data/input.txt": "from a file"},
        max_processes=5,
        max_file_mb=2,
    )
    assert result.status == "ok", result.stderr
    seen = json.loads(result.stdout)
    assert seen["stdin"] == "line one\nline two\n"
    assert seen["file"] == "from a file"
    assert seen["cwd_is_home"]
    assert seen["cpu"] == [4, 5]
    assert seen["as"] == [200 << 20, 200 << 20]
    assert seen["nproc"] == [5, 5]
    assert seen["fsize"] == [2 << 20, 2 << 20]
    assert seen["core"] == [0, 0]


@pytest.mark.parametrize("name", ["../escape.txt", "/etc/escape.txt", "main.py", ""])
def test_extra_file_names_must_stay_inside_the_private_dir(name: str) -> None:
    with pytest.raises(ValueError):
        run_python("pass", timeout_s=2, memory_mb=256, files={name: "x"})


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        run_python("pass", timeout_s=0, memory_mb=256)
    with pytest.raises(ValueError, match="memory_mb"):
        run_python("pass", timeout_s=1, memory_mb=1)


def test_a_signal_is_reported_as_killed() -> None:
    result = run_python("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)", 3, 256)
    assert result.status == "killed"
    assert result.returncode == -15


def test_concurrent_runs_each_get_their_own_identity() -> None:
    results = []

    def one() -> None:
        results.append(run_python(PRINT_REAL_UID + "import time; time.sleep(0.3)", 5, 256))

    threads = [threading.Thread(target=one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [result.status for result in results] == ["ok"] * 4
    uids = {uid_from(result.stdout) for result in results}
    if isolation().throwaway_uids:
        assert len(uids) == 4
        assert all(uid in isolation().uid_range for uid in uids)


# ---------------------------------------------------------------- hostile programs


def test_infinite_loop_times_out_and_its_process_group_dies() -> None:
    program = """
import os
child = os.fork()
if child == 0:
    while True:
        pass
print("CHILD", child, flush=True)
while True:
    pass
"""
    started = time.monotonic()
    result = run_python(program, timeout_s=1.0, memory_mb=256)
    elapsed = time.monotonic() - started
    assert result.status == "timeout"
    # ~timeout + 1 s; a little more slack because CI machines are shared and busy.
    assert elapsed < 2.5
    child = int(result.stdout.split()[1])
    assert wait_until(lambda: not pid_is_alive(child)), f"child {child} survived the timeout"


@needs_throwaway_uid
def test_fork_bomb_is_contained_and_leaves_nothing_behind() -> None:
    # A bounded bomb first: forking stops at the process limit.
    bounded = (
        PRINT_REAL_UID
        + """
import os, time
made = refused = 0
for _ in range(40):
    try:
        pid = os.fork()
    except OSError:
        refused += 1
        continue
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    made += 1
print("MADE", made, "REFUSED", refused, flush=True)
"""
    )
    result = run_python(bounded, timeout_s=5, memory_mb=256, max_processes=6)
    assert result.status == "ok", result.stderr
    made, refused = (int(word) for word in result.stdout.split()[-3::2])
    assert made <= 5 and refused >= 35
    assert wait_until(lambda: not live_pids_of(uid_from(result.stdout)))

    # Then the real thing: every process forks forever and ignores the failures.
    bomb = (
        PRINT_REAL_UID
        + """
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
"""
    )
    started = time.monotonic()
    result = run_python(bomb, timeout_s=1.5, memory_mb=256, max_processes=8)
    assert result.status == "timeout"
    assert time.monotonic() - started < 4
    assert wait_until(lambda: not live_pids_of(uid_from(result.stdout)))
    # The machine is fine: this process can still start programs.
    assert subprocess.run(["true"], check=True, timeout=10).returncode == 0


def test_memory_bomb_is_reported_as_memory() -> None:
    for program in (
        "data = bytearray(2 * 1024 ** 3)",
        "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 1024 ** 2))",
    ):
        result = run_python(program, timeout_s=5, memory_mb=256)
        assert result.status == "memory", (program, result.stderr[-500:])


def test_writes_outside_the_private_dir_do_not_survive() -> None:
    marker = f"outside-{secrets.token_hex(8)}"
    tmp_target = Path("/tmp") / marker
    repo_target = REPO_ROOT / marker
    program = f"""
import os
for path in ({str(tmp_target)!r}, {str(repo_target)!r}):
    try:
        with open(path, "w") as handle:
            handle.write("escaped")
        print("WROTE", path)
    except OSError as exc:
        print("REFUSED", path, type(exc).__name__)
open("inside.txt", "w").write("fine")
print("CWD", os.getcwd())
"""
    result = run_python(program, timeout_s=5, memory_mb=256)
    assert result.status == "ok", result.stderr
    private_dir = Path(result.stdout.split("CWD ")[1].strip())
    assert not private_dir.exists(), "the private dir must be removed"
    if not isolation().throwaway_uids:
        repo_target.unlink(missing_ok=True)
        tmp_target.unlink(missing_ok=True)
        pytest.skip("without root the program runs as the caller and may write what it may")
    # Permissions refuse the repository; /tmp is world-writable, so that file is swept.
    assert f"REFUSED {repo_target} PermissionError" in result.stdout
    assert not repo_target.exists()
    assert not tmp_target.exists()


def test_environment_secrets_do_not_reach_the_program(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = f"s3cret-{secrets.token_hex(8)}"
    monkeypatch.setenv("RL2F_FAKE_API_KEY", secret)
    program = f"""
import os
print("ENV", sorted(os.environ))
print("IN ENV", {secret!r} in repr(os.environ))
found = []
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            if {secret!r}.encode() in open(f"/proc/{{pid}}/environ", "rb").read():
                found.append(pid)
        except OSError:
            pass
print("FOUND IN", found)
"""
    result = run_python(program, timeout_s=5, memory_mb=256)
    assert result.status == "ok", result.stderr
    assert "RL2F_FAKE_API_KEY" not in result.stdout
    assert "IN ENV False" in result.stdout
    if isolation().throwaway_uids:
        # Other uids' /proc/<pid>/environ (ours included) is unreadable to the sandbox.
        assert "FOUND IN []" in result.stdout


@pytest.fixture
def tcp_server() -> Iterator[tuple[int, list[object]]]:
    """A real listening socket on loopback that records every connection it accepts."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    accepted: list[object] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, peer = server.accept()
            except TimeoutError:
                continue
            accepted.append(peer)
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join()
    server.close()


def test_network_is_unreachable(tcp_server: tuple[int, list[object]]) -> None:
    if not isolation().network_isolated:
        pytest.skip("this kernel refuses unprivileged user+network namespaces (unshare -rn)")
    port, accepted = tcp_server
    # The server is reachable from here, so a failure inside is the sandbox's doing.
    socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert wait_until(lambda: len(accepted) == 1)
    program = f"""
import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
    print("CONNECTED")
except OSError as exc:
    print("BLOCKED", type(exc).__name__)
"""
    result = run_python(program, timeout_s=5, memory_mb=256)
    assert result.status == "ok", result.stderr
    assert result.stdout.startswith("BLOCKED")
    time.sleep(0.2)
    assert len(accepted) == 1


def test_huge_output_is_truncated_keeping_head_and_tail() -> None:
    program = "import sys\nsys.stdout.write('x' * 5_000_000)\nprint()\nprint('THE END')"
    result = run_python(program, timeout_s=10, memory_mb=256, output_cap_bytes=10_000)
    assert result.status == "ok"
    assert result.truncated
    assert len(result.stdout) < 10_200
    assert result.stdout.startswith("xxx")
    assert result.stdout.rstrip().endswith("THE END")
    assert "bytes truncated" in result.stdout


@pytest.mark.parametrize("leave_the_group", [False, True])
def test_a_child_left_running_is_killed(leave_the_group: bool) -> None:
    if leave_the_group and not isolation().throwaway_uids:
        pytest.skip("a child that calls setsid() is only reachable through a throwaway uid")
    program = f"""
import os, time
pid = os.fork()
if pid == 0:
    if {leave_the_group}:
        os.setsid()
    print("CHILD", os.getpid(), flush=True)
    time.sleep(60)
    os._exit(0)
time.sleep(0.3)  # let the child print before the parent leaves
"""
    started = time.monotonic()
    result = run_python(program, timeout_s=10, memory_mb=256)
    assert result.status == "ok", result.stderr
    assert time.monotonic() - started < 5, "the sandbox must not wait for the orphan"
    child = int(result.stdout.split()[1])
    assert wait_until(lambda: not pid_is_alive(child)), f"orphan {child} is still running"
