#!/usr/bin/env python3
"""Install the pinned ``transformers serve`` (for the real-backend tests) and print its path.

Usage: python3 scripts/fetch_transformers_serve.py [-q]

Stdlib only. The venv lives in ${DYNLLM_CACHE_DIR:-~/.cache/dynllm}/transformers-serve/<tag>/.
The logic lives in tests/support/transformers_bin.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.transformers_bin import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
