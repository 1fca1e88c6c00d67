"""Real servers for the server tests: `steerc serve` subprocesses on loopback (redis-server: tests/redis_server.py)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cli_process import spawn
from redis_server import free_port

API_KEY = "test-key-0123456789"


def tenant_key_file(folder: Path, tenants: dict[str, str]) -> str:
    """A `--api-keys` file in ``folder`` with one ``TENANT KEY`` line per entry of ``tenants``; its path."""
    path = folder / "keys.txt"
    path.write_text("".join(f"{tenant} {key}\n" for tenant, key in tenants.items()))
    return str(path)


class Server:
    """`steerc serve ENGINE ...` in a subprocess; ``url`` once /health answers. ``module``: what
    ``python -m`` runs (a wrapper of ``steerc.cli`` that takes the same arguments, such as
    tests/server/kill_points.py)."""

    def __init__(self, engine, tmp: Path, *args: str, api_key: str | None = API_KEY, env: dict | None = None, module: str = "steerc.cli"):
        self.port, self.api_key = free_port(), api_key
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"server-{self.port}.log"
        cmd = [sys.executable, "-m", module, "serve", str(engine), "--port", str(self.port), "--log-level", "warning", *args]
        if api_key:
            cmd += ["--api-key", api_key]
        full_env = {**os.environ, "STEERC_CONTEXT_STORE": str(tmp / "store"), **(env or {})}
        self.proc = spawn(module, cmd[3:], full_env, self.log)  # its own process, forked from the zygote of tests/cli_process.py
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"steerc serve exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)  # a refused connection answers at once: poll often, servers start many times a session
        self.stop()
        raise RuntimeError(f"steerc serve did not answer /health in 120 s:\n{self.log.read_text()}")

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def client(self, key: str | None = None, **kwargs) -> httpx.Client:
        """A client with the server's key, or ``key`` (a tenant's, with ``--api-keys``)."""
        headers = {"Authorization": f"Bearer {key}"} if key else self.headers
        return httpx.Client(base_url=self.url, headers=headers, timeout=kwargs.pop("timeout", 120), **kwargs)

    def openai(self):
        from openai import OpenAI

        return OpenAI(base_url=self.url + "/v1", api_key=self.api_key or "unused", max_retries=0, timeout=120)

    def metric(self, name: str, **labels) -> float:
        """One sample of /metrics (0 when absent)."""
        text = httpx.get(self.url + "/metrics", headers=self.headers, timeout=10).text
        want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
        for line in text.splitlines():
            if line.startswith(want + " "):
                return float(line.split()[-1])
        return 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture(scope="session")
def server(tiny_text_engine, tmp_path_factory):
    """The tiny text engine served with an API key and room for 16 concurrent requests."""
    srv = Server(tiny_text_engine, tmp_path_factory.mktemp("serve"), "--max-concurrency", "4", "--max-queue", "16", "--max-body-bytes", "65536")
    yield srv
    srv.stop()
