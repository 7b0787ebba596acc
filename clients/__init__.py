"""Talk to a namegen server: the SDK (`NameGenClient`, `AsyncNameGenClient`), the `namegen` CLI, and the
load generator behind `namegen bench`. Needs httpx; rich only makes the CLI's tables nicer."""
from .errors import (BadRequestError, NameGenConnectionError, NameGenError, NameGenHTTPError, NameGenTimeoutError,
                     ServerError, TooManyRequestsError, UnexpectedResponseError)
from .results import CharProb, GeneratedName, Generation, Health, ModelInfo, ModelList, NameScore, Scores
from .retry import NO_RETRIES, RetryPolicy
from .sdk import DEFAULT_URL, AsyncNameGenClient, NameGenClient

__all__ = [
    "NameGenClient", "AsyncNameGenClient", "RetryPolicy", "NO_RETRIES", "DEFAULT_URL",
    "Generation", "GeneratedName", "Scores", "NameScore", "CharProb", "ModelList", "ModelInfo", "Health",
    "NameGenError", "NameGenConnectionError", "NameGenTimeoutError", "UnexpectedResponseError",
    "NameGenHTTPError", "BadRequestError", "TooManyRequestsError", "ServerError",
]
