"""The standalone tracking service (``campaign.web.tracking_service``) as a real uvicorn process on
a free loopback port, given nothing but its environment variables: for the tests that run the
tracking endpoints both ways they are served (in Airflow's API server, and on their own)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from campaign.dev.net import free_port, wait_until

ROOT = Path(__file__).resolve().parents[3]


def service_env(db_url: str, secret: str, **extra: str) -> dict[str, str]:
    """The whole environment of the process: the service's variables, the interpreter's folder on
    PATH and the package on PYTHONPATH; nothing inherited, so nothing of Airflow's either."""
    return {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "PYTHONPATH": str(ROOT / "include"),
        "CAMPAIGN_DB_URL": db_url,
        "CAMPAIGN_TRACKING_SECRET": secret,
        **extra,
    }


@contextmanager
def tracking_service(db_url: str, secret: str, path: str = "/campaign", timeout: float = 30) -> Iterator[str]:
    """Run ``uvicorn campaign.web.tracking_service:app`` until the block ends; yields the base URL
    of the endpoints (``http://127.0.0.1:<port><path>``) once its health check answers 200."""
    port = free_port()
    env = service_env(db_url, secret, CAMPAIGN_TRACKING_PATH=path)
    command = [
        sys.executable, "-m", "uvicorn", "campaign.web.tracking_service:app", "--host", "127.0.0.1",
        "--port", str(port), "--lifespan", "on", "--no-access-log", "--no-server-header",
    ]  # fmt: skip
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)

        def healthy() -> bool:
            if process.poll() is not None:
                output.seek(0)
                raise RuntimeError(f"the tracking service exited ({process.returncode}): {output.read().decode()}")
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            wait_until(healthy, timeout, 0.05, f"the tracking service on port {port}")
            yield f"http://127.0.0.1:{port}{path.rstrip('/')}"
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
