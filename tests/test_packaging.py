"""The distribution as users install it: an sdist and a wheel built with ``python -m build``, named
``openai-batch-ops`` (``batch-ops`` on PyPI is an unrelated project), each adapter installable and
importable from the wheel with its own extra alone, in a clean venv made with ``uv``."""

from __future__ import annotations

import email.parser
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from batch_ops import __version__

ROOT = Path(__file__).resolve().parents[1]
NAME = "openai-batch-ops"
UV = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``python -m build`` of this checkout (sdist, then the wheel built from the sdist)."""
    out = tmp_path_factory.mktemp("dist")
    src = tmp_path_factory.mktemp("src") / "checkout"
    # A copy, so that the build's egg-info and build/ never land in the checkout.
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".venv", ".git", ".site", ".demo", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".mypy_cache",
        ".ruff_cache", "node_modules"))
    done = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(src)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    yield out


def _wheel(dist: Path) -> Path:
    (wheel,) = dist.glob("*.whl")
    return wheel


def test_the_wheel_and_sdist_carry_our_distribution_name(dist: Path) -> None:
    wheel = _wheel(dist)
    assert wheel.name == f"openai_batch_ops-{__version__}-py3-none-any.whl"
    assert (dist / f"openai_batch_ops-{__version__}.tar.gz").exists()
    with zipfile.ZipFile(wheel) as zf:
        info = f"openai_batch_ops-{__version__}.dist-info"
        meta = email.parser.Parser().parsestr(zf.read(f"{info}/METADATA").decode())
        entry_points = zf.read(f"{info}/entry_points.txt").decode()
        names = zf.namelist()
    assert meta["Name"] == NAME and meta["Version"] == __version__ and meta["License-Expression"] == "Apache-2.0"
    assert {"airflow", "prefect", "all", "s3"} <= set(meta.get_all("Provides-Extra") or [])
    assert "batch-ops = batch_ops.cli:main" in entry_points
    assert "provider_info = batch_ops.airflow.provider:get_provider_info" in entry_points
    assert "batch_ops/py.typed" in names and any(n.startswith("batch_ops/evals/data/") for n in names)
    assert not any(n.startswith(("tests/", "drills/")) for n in names)


ADAPTERS = {
    "airflow": (
        "import importlib.util\n"
        "from airflow.providers_manager import ProvidersManager\n"
        "from batch_ops.airflow import OpenAIBatchHook, OpenAIBatchOperator, OpenAIBatchSensor, OpenAIBatchTrigger\n"
        "assert importlib.util.find_spec('prefect') is None, 'prefect came with the airflow extra'\n"
        f"info = ProvidersManager().providers[{NAME!r}]\n"
        "assert info.version == __import__('batch_ops').__version__, info\n"
        "from batch_ops.airflow.provider import DOCS_URL\n"
        "assert info.data['documentation-url'] == DOCS_URL, info.data\n"
        "print('ok', OpenAIBatchOperator.__name__)\n"
    ),
    "prefect": (
        "import importlib.util\n"
        "from batch_ops.prefect import OpenAIBatchCredentials, run_batch, submit_batch, wait_for_batch\n"
        "assert importlib.util.find_spec('airflow') is None, 'airflow came with the prefect extra'\n"
        "print('ok', run_batch.name)\n"
    ),
    # The local server and the webhook receiver, without either framework (one venv for both: each
    # install costs ~50 s of make test): an upload (multipart form: python-multipart), a batch end
    # to end, and a signed delivery verified.
    "server,webhooks": (
        "import importlib.util\n"
        "from batch_ops import BatchClient\n"
        "from batch_ops.server import serve_in_background\n"
        "assert importlib.util.find_spec('airflow') is None and importlib.util.find_spec('prefect') is None\n"
        "requests = [{'custom_id': 'a', 'body': {'model': 'm', 'input': 'x'}}]  # uploaded as a JSONL file\n"
        "with serve_in_background() as url, BatchClient(api_key='sk-local-dev-7f3a', base_url=url) as client:\n"
        "    batch = client.batches.wait(client.submit(requests, endpoint='/v1/embeddings').id, poll_interval=0.1)\n"
        "assert batch.status == 'completed', batch\n"
        "import base64\n"
        "from batch_ops.webhooks import WebhookVerifier, create_receiver_app\n"
        "from batch_ops.webhooks.verify import sign\n"
        "secret = 'whsec_' + base64.b64encode(b'k' * 32).decode()\n"
        "body = '{\"id\": \"evt_1\", \"type\": \"batch.completed\", \"created_at\": 1, \"data\": {\"id\": \"b\"}}'\n"
        "create_receiver_app(secret=secret)\n"
        "print('ok', WebhookVerifier(secret).verify(body, sign(secret, 'evt_1', body)).batch_id)\n"
    ),
}


@pytest.mark.skipif(UV is None, reason="uv is not installed (it comes with the dev extra)")
@pytest.mark.parametrize("extra", sorted(ADAPTERS))
def test_each_adapter_installs_from_the_wheel_with_its_extra_alone(dist: Path, extra: str, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    env = {**os.environ, "UV_NATIVE_TLS": "1", "AIRFLOW_HOME": str(tmp_path / "airflow"),
           "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("VIRTUAL_ENV", None)
    made = subprocess.run([str(UV), "venv", "-q", "-p", sys.executable, str(venv)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [str(UV), "pip", "install", "-q", "-p", str(python), "-c", str(ROOT / "constraints.txt"),
         f"{NAME}[{extra}] @ {_wheel(dist).as_uri()}"],
        env=env, capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-3000:]
    ran = subprocess.run([str(python), "-c", ADAPTERS[extra]], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert ran.returncode == 0 and ran.stdout.startswith("ok"), ran.stdout[-2000:] + ran.stderr[-3000:]
