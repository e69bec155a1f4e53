"""``python -m recsys_tasks.bench`` (what the scoring child process runs)."""

import sys

from .runner import main

sys.exit(main())
