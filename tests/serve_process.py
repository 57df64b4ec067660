"""Start a real `bertserve serve` process on loopback for tests and wait until it says it is ready.

Every port is 0: the server binds free ports itself and reports them on its ready line, so tests never
race each other for ports.
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

REPO = Path(__file__).resolve().parents[1]


class ServerProcess:
    def __init__(self, *flags: str, startup_timeout: float = 120.0):
        self.log = tempfile.NamedTemporaryFile("w+", prefix="bertserve-serve-", suffix=".log", delete=False)
        env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               # spinning OpenMP threads collapse (10x and worse) when the 2 cores are shared; see docs/serve.md
               "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
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
        return Path(self.log.name).read_text(errors="replace")

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
        return self.proc.returncode


def lee_sentences() -> list[str]:
    """Real English news sentences (gensim's Lee background corpus), 4 words or more, in file order."""
    import importlib.util
    import re

    path = Path(importlib.util.find_spec("gensim").origin).parent / "test" / "test_data" / "lee_background.cor"
    text = path.read_text(encoding="utf-8", errors="replace")
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.split()) >= 4]
