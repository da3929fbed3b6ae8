"""``python -m drills.cluster``: see :mod:`drills.cluster.run`."""

import sys

from drills.cluster.run import main

sys.exit(main())
