"""Container HEALTHCHECK: exit 0 when the server's /health answers 200 on its own port, else 1 (stdlib only)."""

import os
import sys
import urllib.request


def main() -> int:
    """Probe http://127.0.0.1:$MLRELEASE_PORT/health with a short timeout."""
    port = os.environ.get("MLRELEASE_PORT", "8080")
    try:
        url = f"http://127.0.0.1:{port}/health"  # fixed scheme and host: only the port comes from the env
        with urllib.request.urlopen(url, timeout=2) as response:  # nosec B310
            return 0 if response.status == 200 else 1
    except OSError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
