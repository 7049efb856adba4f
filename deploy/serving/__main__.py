"""``python -m deploy.serving --model-dir DIR | --model-uri models:/NAME@ALIAS [--host H] [--port P]``.

Other settings come from MLRELEASE_* environment variables (mlrelease.core.settings.Settings). Exits 2 without
starting when the configuration is unsafe or unusable (admin on without a real token, too many threads, ...).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from pydantic import ValidationError

from deploy.serving.config import ServingSettings, check_cpu_budget

log = logging.getLogger("deploy.serving")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m deploy.serving", description=__doc__)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model-dir", type=Path, help="bundle folder (model.pt + model_card.json) or its model.pt")
    source.add_argument("--model-uri", help="registry model: models:/NAME@ALIAS or models:/NAME/VERSION")
    parser.add_argument("--model-version", help="version label to report (default: registry version or 'local')")
    parser.add_argument("--host", help="bind address (default MLRELEASE_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default MLRELEASE_PORT or 8080)")
    return parser.parse_args(argv)


def load_settings(args: argparse.Namespace) -> ServingSettings:
    """Environment settings with command-line overrides; raises ValueError naming what is wrong."""
    overrides: dict[str, Any] = {key: value for key, value in vars(args).items() if value is not None}
    try:
        settings = ServingSettings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        raise ValueError(problems) from exc
    settings.source()
    check_cpu_budget(settings)
    return settings


def serve(settings: ServingSettings) -> None:
    """Run uvicorn (uvloop, write-combining httptools with the prediction fast path, one process) until
    SIGTERM/SIGINT, then drain."""
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):  # torch and numpy's BLAS
        os.environ[variable] = str(settings.torch_threads)
    import uvicorn

    from deploy.serving.app import ModelServer
    from deploy.serving.fastpath import protocol_for
    from deploy.serving.transport import CombiningHttpToolsProtocol, guarded

    app = ModelServer(settings)
    protocol = protocol_for(app, app.guard) if settings.fast_path else guarded(CombiningHttpToolsProtocol, app.guard)

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            app.begin_drain()  # not ready; gRPC (when on) stops taking calls while HTTP drains
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=protocol,
        lifespan="on",
        access_log=False,
        log_level="info",
        backlog=4096,
        timeout_graceful_shutdown=math.ceil(settings.graceful_timeout_s),  # int(0.5) = 0: no drain at all
        timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type]  # uvicorn reads it as seconds, float too
        server_header=False,
        proxy_headers=False,  # the rate limiter reads X-Forwarded-For itself (security.client_address), when on
    )
    DrainingServer(config).run()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings(parse_args(argv))
    except ValueError as exc:
        log.error("refusing to start: %s", exc)
        return 2
    serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
