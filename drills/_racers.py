"""Tries of one key in processes of their own: the racers of the money drills (8a, 24a, 24g, 24l).

A try is a fresh Python process that builds a ``BatchClient`` from ``ClientSettings`` keywords,
sleeps until an agreed wall-clock moment, submits a request file with ``SubmitSpec`` keywords and
prints what it did as one JSON line (``{"batch": id, "created": bool}``). :func:`race` starts ``n``
of them for the same moment; :func:`submit_argv` is one try's command line, for drills that kill it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Mapping
from typing import Any

from drills._common import Drill

__all__ = ["SUBMIT", "race", "submit_argv"]

#: One try: settings and spec as JSON, the request file, the moment to submit at (epoch seconds).
SUBMIT = textwrap.dedent("""
    import json, sys, time
    from batch_ops import BatchClient, ClientSettings, SubmitSpec
    settings, source, spec, start = json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
    with BatchClient(settings=ClientSettings(**settings)) as client:
        time.sleep(max(0.0, float(start) - time.time()))
        sub = client.submit_spec(source, SubmitSpec.of(**spec))
    print(json.dumps({"batch": sub.batch.id, "created": sub.created}), flush=True)
""")


def submit_argv(settings: Mapping[str, Any], source: str | os.PathLike[str], spec: Mapping[str, Any],
                start: float = 0.0) -> list[str]:
    """The command line of one try (``start`` 0: at once)."""
    return [sys.executable, "-c", SUBMIT, json.dumps(dict(settings)), os.fspath(source), json.dumps(dict(spec)),
            repr(start)]


def race(d: Drill, n: int, *, settings: Mapping[str, Any], source: str | os.PathLike[str], spec: Mapping[str, Any],
         timeout: float = 120.0) -> list[dict[str, Any]]:
    """Start ``n`` tries that submit at the same moment; what each said (a failed try fails the drill).

    The moment is 3.05 s past the next whole second: every process has imported batch_ops by then,
    and every create lands in one ``created_at`` second, so the reconcile's ties are broken by id.
    """
    start = int(time.time()) + 3.05
    procs = [subprocess.Popen(submit_argv(settings, source, spec, start), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True) for _ in range(n)]
    said = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        d.require(proc.returncode == 0, f"a racing process failed: {err[-500:]}")
        said.append(json.loads(out))
    return said
