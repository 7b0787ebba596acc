#!/usr/bin/env python3
"""Exit 0 when the server in this container answers /readyz with 200 (a model is loaded), else 1."""
import os
import sys
import urllib.error
import urllib.request

url = f"http://127.0.0.1:{os.environ.get('NAMEGEN_PORT', '8000')}/readyz"
try:
    with urllib.request.urlopen(url, timeout=2):
        sys.exit(0)
except (urllib.error.URLError, OSError) as e:
    print(f"{url}: {e}", file=sys.stderr)
    sys.exit(1)
