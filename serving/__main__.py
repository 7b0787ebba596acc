"""`python -m serving`: the service under uvicorn, configured from NAMEGEN_* variables."""
from __future__ import annotations

import logging
import sys

import uvicorn
from pydantic import ValidationError

from .backends import BackendError, check_device
from .settings import Settings

DRAIN_SECONDS = 30  # SIGTERM: stop accepting, finish what is in flight for at most this long


def main() -> None:
    try:
        settings = Settings()
        check_device(settings.backend, settings.device)
    except ValidationError as e:
        first = e.errors()[0]
        print(f"error: NAMEGEN_{str(first['loc'][0]).upper()}: {first['msg']}", file=sys.stderr)
        sys.exit(2)
    except BackendError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .app import create_app

    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
                timeout_graceful_shutdown=DRAIN_SECONDS)


if __name__ == "__main__":
    main()
