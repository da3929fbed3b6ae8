"""Upload and download a 200 MB request file through the core clients; time and peak memory.

Acceptance target (issue 2): uploading a 200 MB / 50,000-line file adds under 64 MB peak
memory. Each measurement runs in a fresh child process; its ``ru_maxrss`` is compared with a
baseline child that imports batch_ops and builds a client but transfers nothing.

Usage::

    python benchmarks/bench_upload.py                 # the acceptance run (~200 MB)
    python benchmarks/bench_upload.py --lines 5000    # a quick smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(mode: str, url: str, path: str) -> None:
    """Run one measurement and print a JSON line with seconds and ru_maxrss (KiB)."""
    from batch_ops import AsyncBatchClient, BatchClient

    started = time.perf_counter()
    if mode == "baseline":
        BatchClient(api_key="bench", base_url=url).close()
    elif mode == "upload-sync":
        with BatchClient(api_key="bench", base_url=url) as c:
            c.files.upload(path)
    elif mode == "upload-async":

        async def run() -> None:
            async with AsyncBatchClient(api_key="bench", base_url=url) as c:
                await c.files.upload(path)

        asyncio.run(run())
    elif mode in ("download-sync", "download-async"):
        file_id, target = path.split("::")
        if mode == "download-sync":
            with BatchClient(api_key="bench", base_url=url) as c:
                c.files.download(file_id, target)
        else:

            async def run_download() -> None:
                async with AsyncBatchClient(api_key="bench", base_url=url) as c:
                    await c.files.download(file_id, target)

            asyncio.run(run_download())
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def measure(mode: str, url: str, path: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", mode, url, path], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--line-bytes", type=int, default=4096)
    parser.add_argument("--data-dir", type=Path, default=HERE / "data")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "URL", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return 0

    sys.path.insert(0, str(HERE))
    from bench_jsonl import generate  # the same generated file as the validation benchmark

    from batch_ops import BatchClient
    from batch_ops.server import serve_in_background

    requests_path, _, _ = generate(args.data_dir, lines=args.lines, line_bytes=args.line_bytes)
    size_mb = requests_path.stat().st_size / 1e6
    rows = []
    with tempfile.TemporaryDirectory() as data_dir, serve_in_background(data_dir=data_dir) as url:
        base = measure("baseline", url, str(requests_path))
        for mode in ("upload-sync", "upload-async"):
            m = measure(mode, url, str(requests_path))
            rows.append((mode, m["seconds"], (m["maxrss_kib"] - base["maxrss_kib"]) / 1024))
        with BatchClient(api_key="bench", base_url=url) as c:
            file_id = c.files.upload(requests_path).id
        with tempfile.TemporaryDirectory() as out_dir:
            for mode in ("download-sync", "download-async"):
                m = measure(mode, url, f"{file_id}::{out_dir}/{mode}.jsonl")
                rows.append((mode, m["seconds"], (m["maxrss_kib"] - base["maxrss_kib"]) / 1024))
    print(f"\nfile: {requests_path.name}, {size_mb:.1f} MB, {args.lines:,} lines; "
          f"baseline child peak RSS {base['maxrss_kib'] / 1024:.1f} MiB\n")
    print("| operation | seconds | MB/s | peak RSS over baseline (MiB) | target |")
    print("|---|---:|---:|---:|---|")
    for mode, seconds, delta in rows:
        target = "< 64 MiB" if mode.startswith("upload") else ""
        print(f"| {mode} | {seconds:.2f} | {size_mb / seconds:.0f} | {delta:.1f} | {target} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
