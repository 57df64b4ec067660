"""Run `bertserve serve` as a child process and wait until it is ready: for tests, benchmarks and notebooks.

With every port 0 (the default here) the server binds free ports itself and reports them on its ready line,
so parallel runs never race for ports.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

# the folder holding this bertserve package, so the child imports the same code as its parent
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


class ServerProcess:
    """`ServerProcess("--model", path)`; `.url`, `.port`, `.port_out`; `.stop()` sends SIGTERM and waits.

    The server's stderr goes to `log_path` when given (kept after `stop()`), else to a temporary file that a
    clean exit removes.
    """

    def __init__(self, *flags: str, startup_timeout: float = 120.0, log_path: str | Path | None = None,
                 env: dict | None = None):
        self.keep_log = log_path is not None
        # open for the server's whole life: stop() closes it
        self.log = (open(log_path, "w+") if self.keep_log else  # noqa: SIM115
                    tempfile.NamedTemporaryFile("w+", prefix="bertserve-serve-", suffix=".log", delete=False))  # noqa: SIM115
        env = {**os.environ, "PYTHONPATH": f"{PACKAGE_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})}
        cmd = [sys.executable, "-m", "bertserve.cli", "serve", "--http-port", "0", "--port", "0",
               "--port-out", "0", *flags]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        self.info = self._wait_ready(startup_timeout)
        self.http_port, self.port, self.port_out = self.info["http_port"], self.info["port"], self.info["port_out"]
        self.url = f"http://127.0.0.1:{self.http_port}"

    def _wait_ready(self, timeout):
        lines = []
        reader = threading.Thread(target=lambda: lines.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        line = lines[0] if lines else ""
        if not line.startswith("{"):
            self.stop(kill=True)
            raise RuntimeError(f"server did not start: {line!r}\n{self.log_text()[-3000:]}")
        return json.loads(line)

    def log_text(self) -> str:
        path = Path(self.log.name)
        return path.read_text(errors="replace") if path.exists() else ""

    def signal(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self, kill: bool = False) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc.stdout.close()
        self.log.close()
        if self.proc.returncode == 0 and not self.keep_log:  # a failed run keeps its log for reading
            Path(self.log.name).unlink(missing_ok=True)
        return self.proc.returncode

