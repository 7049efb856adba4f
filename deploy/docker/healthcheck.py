"""Container HEALTHCHECK: exit 0 when the server answers 200 on its own port, else 1 (stdlib only).

``healthcheck.py`` probes /health (the process serves: the image's HEALTHCHECK); ``healthcheck.py /ready`` probes
/ready (the model is loaded and warmed: what a router waits for, e.g. deploy/compose's depends_on)."""

import os
import sys
import urllib.request

PATHS = ("/health", "/ready")


def main(argv: list[str]) -> int:
    """Probe http://127.0.0.1:$MLRELEASE_PORT/health (or the path given, /health or /ready) with a short timeout."""
    path = argv[0] if argv else PATHS[0]
    if path not in PATHS:
        print(f"healthcheck.py: unknown path {path!r}; one of {', '.join(PATHS)}", file=sys.stderr)
        return 1
    port = os.environ.get("MLRELEASE_PORT", "8080")
    try:
        url = f"http://127.0.0.1:{port}{path}"  # fixed scheme and host: only the port comes from the env
        with urllib.request.urlopen(url, timeout=2) as response:  # nosec B310
            return 0 if response.status == 200 else 1
    except OSError:
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
