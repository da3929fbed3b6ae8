"""``-o`` onto something that is not a plain file: a FIFO, a link, a folder, someone else's link in /tmp.

Before: ``batch-ops results -o PATH`` (and ``job -o``, ``shard``) wrote a temp file and renamed it
over PATH whatever PATH was, and exited 0: a FIFO, a link, and (run as root) ``/dev/null`` itself
were replaced by a regular file. Now atomic replace is for regular files only: a FIFO or a character
device is streamed to, a link's target is written and the link kept, and a folder, a disk or a
foreign link in a shared folder is refused before any download.

Every command runs as a real process (``python -m batch_ops.cli``) against a local server. No test
touches anything under /dev: FIFOs are made with ``os.mkfifo`` in a temp folder, and the one
decision a character device takes (streamed, like a FIFO) is checked on its ``st_mode`` alone.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from batch_ops import BatchClient
from batch_ops.server import ServerURL, serve_in_background

CHAT = "/v1/chat/completions"
KEY = "sk-outputs-test-0123456789"
N = 5


@pytest.fixture(scope="module")
def server() -> Iterator[ServerURL]:
    with serve_in_background() as url:
        yield url


@pytest.fixture(scope="module")
def batch_id(server: ServerURL, tmp_path_factory: pytest.TempPathFactory) -> str:
    src = _requests(tmp_path_factory.mktemp("in") / "in.jsonl")
    with BatchClient(api_key=KEY, base_url=server) as client:
        batch = client.submit(src, endpoint=CHAT)
        return client.batches.wait(batch.id, poll_interval=0.05, timeout=60).id


def _requests(path: Path, n: int = N) -> Path:
    path.write_text("".join(json.dumps({"custom_id": f"q-{i}", "method": "POST", "url": CHAT,
                                        "body": {"model": "m", "messages": [{"role": "user", "content": f"{i}"}]}})
                            + "\n" for i in range(n)))
    return path


def _cli(server: str, *args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": server, "NO_COLOR": "1", "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "batch_ops.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout, check=False)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


class _Reader:
    """A process at the other end of a FIFO: it reads everything until the writer closes."""

    def __init__(self, fifo: Path) -> None:
        code = "import sys\nwith open(sys.argv[1], 'rb') as f:\n    sys.stdout.buffer.write(f.read())\n"
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(fifo)], stdout=subprocess.PIPE)

    def read(self, timeout: float = 10) -> bytes | None:
        """What it read; None when nothing ever opened the FIFO to write (it was replaced, say)."""
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            return None
        return out


def _content_calls(server: ServerURL) -> int:
    calls = httpx.get(server.removesuffix("/v1") + "/healthz").json()["calls"]
    return int(calls.get("GET /v1/files/{id}/content", 0))


def test_results_into_a_fifo_stream_to_its_reader_and_leave_it_a_fifo(server: ServerURL, batch_id: str,
                                                                       tmp_path: Path) -> None:
    fifo = tmp_path / "results.pipe"
    os.mkfifo(fifo)
    reader = _Reader(fifo)
    proc = _cli(server, "results", batch_id, "-o", fifo)
    got = reader.read()
    assert proc.returncode == 0, proc.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode), "the FIFO was replaced by a regular file"
    assert got is not None, "nothing was written to the FIFO"
    assert [json.loads(line)["custom_id"] for line in got.decode().splitlines()] == [f"q-{i}" for i in range(N)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.pipe"]  # no temp file left beside it


def test_results_through_a_link_write_its_target_and_keep_the_link(server: ServerURL, batch_id: str,
                                                                   tmp_path: Path) -> None:
    real = tmp_path / "runs" / "2024-06-01.csv"
    real.parent.mkdir()
    real.write_text("old\n")
    link = tmp_path / "latest.csv"
    link.symlink_to(real)
    dangling = tmp_path / "next.csv"
    dangling.symlink_to(tmp_path / "runs" / "2024-06-02.csv")

    for target in (link, dangling):
        proc = _cli(server, "results", batch_id, "-o", target)
        assert proc.returncode == 0, proc.stderr
        assert target.is_symlink(), f"{target.name}: the link was replaced by a regular file"
        rows = target.read_text().splitlines()  # read through the link: the target holds the results
        assert rows[0].startswith("custom_id,") and len(rows) == N + 1
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["2024-06-01.csv", "2024-06-02.csv"]


def test_results_through_a_link_to_a_fifo_stream(server: ServerURL, batch_id: str, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    link = tmp_path / "out.jsonl"
    link.symlink_to(fifo)
    reader = _Reader(fifo)
    proc = _cli(server, "results", batch_id, "-o", link, "--json")
    got = reader.read()
    assert proc.returncode == 0, proc.stderr
    assert link.is_symlink() and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert got is not None and len(got.decode().splitlines()) == N
    assert json.loads(proc.stdout)["ok"] == N


def test_results_into_a_folder_are_refused_before_anything_is_downloaded(server: ServerURL, batch_id: str,
                                                                        tmp_path: Path) -> None:
    before = _content_calls(server)
    proc = _cli(server, "results", batch_id, "-o", tmp_path)
    assert proc.returncode == 1
    assert "is a directory" in proc.stderr and "results.jsonl" in proc.stderr, proc.stderr  # the fix names a file
    assert _content_calls(server) == before, "the results were downloaded before the output was refused"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a link to another user takes root")
def test_someone_elses_link_in_a_shared_folder_is_refused(server: ServerURL, batch_id: str, tmp_path: Path) -> None:
    # /tmp's situation: a sticky folder anyone may write to, and a link planted there by another
    # user, pointing at a file of ours (as root: any file). The kernel refuses to follow it for a
    # shell's >; replacing its target ourselves would hand the other user a write anywhere.
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    planted = shared / "results.jsonl"
    planted.symlink_to(precious)
    os.lchown(planted, 4242, 4242)
    proc = _cli(server, "results", batch_id, "-o", planted)
    assert proc.returncode == 1
    assert "belongs to someone else" in proc.stderr, proc.stderr
    assert planted.is_symlink() and precious.read_text() == "keep me\n"


def test_a_job_writes_through_a_link_and_into_a_fifo(server: ServerURL, tmp_path: Path) -> None:
    src = _requests(tmp_path / "in.jsonl")
    real = tmp_path / "store" / "merged.jsonl"
    real.parent.mkdir()
    link = tmp_path / "merged.jsonl"
    link.symlink_to(real)
    proc = _cli(server, "job", src, "--endpoint", CHAT, "--output", link, "--poll-interval", "0.05")
    assert proc.returncode == 0, proc.stderr
    assert link.is_symlink() and len(real.read_text().splitlines()) == N

    fifo = tmp_path / "merged.pipe"
    os.mkfifo(fifo)
    reader = _Reader(fifo)
    proc = _cli(server, "job", src, "--endpoint", CHAT, "--output", fifo, "--poll-interval", "0.05")
    got = reader.read()
    assert proc.returncode == 0, proc.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and got is not None and len(got.decode().splitlines()) == N


def test_a_job_into_a_folder_is_refused_before_any_batch(server: ServerURL, tmp_path: Path) -> None:
    src = _requests(tmp_path / "in.jsonl")
    out = tmp_path / "out"
    out.mkdir()
    with BatchClient(api_key=KEY, base_url=server) as client:
        before = len(list(client.batches.iter_all()))
        proc = _cli(server, "job", src, "--endpoint", CHAT, "--output", out, "--poll-interval", "0.05")
        assert len(list(client.batches.iter_all())) == before
    assert proc.returncode == 1 and "is a directory" in proc.stderr, proc.stderr


def test_shard_leaves_a_fifo_or_a_link_at_a_part_name_alone(tmp_path: Path) -> None:
    src = _requests(tmp_path / "big.jsonl")
    parts = tmp_path / "parts"
    parts.mkdir()
    os.mkfifo(parts / "big-001.jsonl")
    proc = _cli("http://127.0.0.1:9/v1", "shard", src, "--out-dir", parts, "--max-lines", "2")
    assert proc.returncode == 1 and "big-001.jsonl is not a regular file" in proc.stderr, proc.stderr
    assert stat.S_ISFIFO(os.lstat(parts / "big-001.jsonl").st_mode)
    assert sorted(p.name for p in parts.iterdir()) == ["big-001.jsonl"]  # no other part, no temp file


def test_a_character_device_is_streamed_like_a_fifo_and_a_disk_refused() -> None:
    # Decided on the file type alone; no device node is made or written in any test.
    from batch_ops._files import write_mode

    assert write_mode(stat.S_IFCHR | 0o666) == write_mode(stat.S_IFIFO | 0o600) == "stream"
    assert write_mode(stat.S_IFREG | 0o644) == write_mode(None) == "replace"
    assert write_mode(stat.S_IFBLK | 0o660) == "a block device (a disk)"
    assert write_mode(stat.S_IFSOCK | 0o777) == "a socket"
