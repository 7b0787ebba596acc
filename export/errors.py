"""The one error type the export CLI turns into `error: ...` and exit code 2 (kept torch-free)."""


class ExportError(Exception):
    """Bad input or a refused export; the message says what was wrong and what to do."""
