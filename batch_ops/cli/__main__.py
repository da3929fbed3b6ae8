"""``python -m batch_ops.cli``: the same program as the ``batch-ops`` console script.

Examples:
    >>> # python -m batch_ops.cli status batch_abc --json
"""

from __future__ import annotations

import sys

from batch_ops.cli import main

if __name__ == "__main__":
    sys.exit(main())
