"""One exception type for bad input: the CLI prints its message as a single line and exits non-zero."""


class OPRMUsageError(ValueError):
    """Raised for invalid user input (files, templates, sizes, unsupported models)."""
