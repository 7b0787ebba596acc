"""`python -m serving`: the service under uvicorn, configured from NAMEGEN_* variables."""
from __future__ import annotations

import sys

from pydantic import ValidationError

from .backends import BackendError, check_device
from .settings import Settings, configure_logging


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
    configure_logging(settings)
    from .http_server import serve

    serve(settings)


if __name__ == "__main__":
    main()
