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

from rl2f.tasks.sandbox import (
    ALLOW_UNISOLATED_ENV,
    Isolation,
    SandboxUnavailable,
    isolation,
    require_isolation,
    run_python,
    unisolated_allowed,
)

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


def require(guarantee: str) -> None:
    """Fail (never skip) when this machine lacks a guarantee a test checks. Only a user who
    explicitly allowed unisolated code (RL2F_ALLOW_UNISOLATED_CODE=1) gets a skip instead,
    since then the sandbox knowingly runs without it (and the hostile test may be unsafe)."""
    have = {
        "throwaway uid": isolation().throwaway_uids,
        "network namespace": isolation().network_isolated,
    }[guarantee]
    if have:
        return
    message = f"this machine gives the sandbox no {guarantee}: {isolation().missing}"
    if unisolated_allowed():
        pytest.skip(f"{message}; {ALLOW_UNISOLATED_ENV}=1 accepts that")
    pytest.fail(f"{message}; code tasks refuse to run here ({ALLOW_UNISOLATED_ENV}=1 accepts it)")


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
    require("throwaway uid")
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


def test_fork_bomb_is_contained_and_leaves_nothing_behind() -> None:
    require("throwaway uid")
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
    require("throwaway uid")
    try:
        result = run_python(program, timeout_s=5, memory_mb=256)
    finally:
        escaped = [path for path in (repo_target, tmp_target) if path.exists()]
        for path in escaped:
            path.unlink()
    assert result.status == "ok", result.stderr
    private_dir = Path(result.stdout.split("CWD ")[1].strip())
    assert not private_dir.exists(), "the private dir must be removed"
    # Permissions refuse the repository; /tmp is world-writable, so that file is swept.
    assert f"REFUSED {repo_target} PermissionError" in result.stdout
    assert not escaped, f"written outside the sandbox and left there: {escaped}"


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
    require("throwaway uid")
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
    require("network namespace")
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
    if leave_the_group:
        require("throwaway uid")  # only it reaches a child that called setsid()
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


# ---------------------------------------------------------------- refusing to run unisolated

UNISOLATED = Isolation(python=isolation().python, throwaway_uids=False, unshare=None)


def test_without_isolation_code_is_refused_naming_what_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ALLOW_UNISOLATED_ENV, raising=False)
    with pytest.raises(SandboxUnavailable) as refused:
        require_isolation(UNISOLATED)
    message = str(refused.value)
    assert "\n" not in message
    assert "no throwaway uid" in message and "no network namespace" in message
    assert f"{ALLOW_UNISOLATED_ENV}=1" in message
    # Half isolated is still refused: each guarantee is named on its own.
    half = Isolation(python=UNISOLATED.python, throwaway_uids=True, unshare=None)
    with pytest.raises(SandboxUnavailable, match="no network namespace") as refused:
        require_isolation(half)
    assert "throwaway uid" not in str(refused.value)


def test_run_python_refuses_when_the_machine_cannot_isolate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import rl2f.tasks.sandbox as sandbox

    monkeypatch.delenv(ALLOW_UNISOLATED_ENV, raising=False)
    monkeypatch.setattr(sandbox, "isolation", lambda: UNISOLATED)
    with pytest.raises(SandboxUnavailable):
        run_python("print('never runs')", timeout_s=5, memory_mb=256)
    # An explicit choice, by argument or by environment, runs it (as the caller, networked).
    assert run_python("print(1)", 5, 256, allow_unisolated=True).stdout == "1\n"
    monkeypatch.setenv(ALLOW_UNISOLATED_ENV, "1")
    assert run_python("print(2)", 5, 256).stdout == "2\n"
    with pytest.raises(SandboxUnavailable):
        run_python("print(3)", 5, 256, allow_unisolated=False)


def test_this_machine_isolates_or_the_user_said_it_need_not() -> None:
    """The suite's own guard: on a machine that cannot isolate, this fails unless the user
    opted out explicitly, so CI cannot pass while model code runs with network access."""
    if isolation().missing and unisolated_allowed():
        pytest.skip(f"{ALLOW_UNISOLATED_ENV}=1: running unisolated by choice")
    assert isolation().missing == [], (
        f"the sandbox cannot isolate code here: {isolation().missing}; "
        f"set {ALLOW_UNISOLATED_ENV}=1 to accept that"
    )


# ---------------------------------------------------------------- more hostile programs


@pytest.fixture
def planted_secrets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Path]]:
    """Secret files outside the sandbox, stored the way credentials are: mode 0600 in the
    user's home, and 0600 inside a 0700 directory (like ~/.ssh, ~/.aws)."""
    token = secrets.token_hex(8)
    in_home = Path.home() / f".rl2f-test-secret-{token}"
    in_home.write_text(f"SECRET-{token}")
    in_home.chmod(0o600)
    private = tmp_path_factory.mktemp("secrets")
    private.chmod(0o700)
    in_dir = private / "credentials"
    in_dir.write_text(f"SECRET-{token}")
    in_dir.chmod(0o600)
    try:
        yield [in_home, in_dir]
    finally:
        in_home.unlink()


def test_secret_files_on_disk_cannot_be_read(planted_secrets: list[Path]) -> None:
    require("throwaway uid")
    program = f"""
for path in {[str(path) for path in planted_secrets]!r}:
    try:
        print("READ", path, open(path).read())
    except OSError as exc:
        print("REFUSED", path, type(exc).__name__)
"""
    result = run_python(program, timeout_s=5, memory_mb=256)
    assert result.status == "ok", result.stderr
    assert "SECRET-" not in result.stdout
    assert result.stdout.count("REFUSED") == len(planted_secrets)


def test_kill_minus_one_reaches_only_the_sandbox() -> None:
    require("throwaway uid")  # as the caller, kill(-1) would kill all of the caller's processes
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        # kill(-1) spares its caller, so the program lives on to tell what it could reach.
        result = run_python(
            "import os, signal\nos.kill(-1, signal.SIGKILL)\nprint('still here')", 5, 256
        )
        assert (result.status, result.stdout) == ("ok", "still here\n"), result.stderr
        time.sleep(0.2)
        assert bystander.poll() is None, "kill(-1) in the sandbox killed one of our processes"
    finally:
        bystander.kill()
        bystander.wait()


def test_a_huge_file_stops_at_the_file_size_limit() -> None:
    program = """
import errno
written = 0
try:
    with open("huge.bin", "wb", buffering=0) as handle:
        while written < 64 << 20:
            written += handle.write(b"x" * (1 << 20))
except OSError as exc:
    print("STOPPED", errno.errorcode[exc.errno], written)
else:
    print("WROTE", written)
"""
    result = run_python(program, timeout_s=10, memory_mb=256, max_file_mb=2)
    assert result.status == "ok", result.stderr
    outcome, *rest = result.stdout.split()
    assert outcome == "STOPPED" and rest[0] == "EFBIG"
    assert int(rest[1]) <= 2 << 20


@pytest.fixture
def udp_server() -> Iterator[tuple[int, list[bytes]]]:
    """A real UDP socket on loopback that records every datagram it receives."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(0.1)
    received: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                received.append(server.recv(4096))
            except TimeoutError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], received
    stop.set()
    thread.join()
    server.close()


def test_udp_and_dns_are_unreachable(udp_server: tuple[int, list[bytes]]) -> None:
    require("network namespace")
    port, received = udp_server
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.sendto(b"from the test", ("127.0.0.1", port))
    probe.close()
    assert wait_until(lambda: received == [b"from the test"]), "the UDP server does not work"
    # A hand-made DNS query (id 0x1234, one question: example.com A) to the loopback server,
    # then a real lookup through the system resolver.
    program = f"""
import socket
query = bytes.fromhex("123401000001000000000000076578616d706c6503636f6d0000010001")
try:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.sendto(query, ("127.0.0.1", {port}))
    print("UDP SENT")
except OSError as exc:
    print("UDP BLOCKED", type(exc).__name__)
try:
    print("DNS RESOLVED", socket.getaddrinfo("example.com", 443, proto=socket.IPPROTO_TCP))
except OSError as exc:
    print("DNS BLOCKED", type(exc).__name__)
"""
    result = run_python(program, timeout_s=10, memory_mb=256)
    assert result.status == "ok", result.stderr
    assert "UDP BLOCKED" in result.stdout and "DNS BLOCKED" in result.stdout, result.stdout
    time.sleep(0.2)
    assert received == [b"from the test"]
