"""Errors a user can act on: the CLI prints their message as one line and exits non-zero."""


class OPRMUsageError(ValueError):
    """Invalid user input (files, templates, sizes, options, unsupported models)."""


class ModelError(OPRMUsageError):
    """The model itself failed on a forward pass (e.g. an inconsistent config); the original error is chained."""


class GenerationCancelled(BaseException):
    """Raised inside ``generate`` when its ``should_stop`` callback says so (a server's client went away). A
    BaseException, so that no ``except Exception`` on the way turns it into a failure."""


class model_failures:
    """Context manager: an exception raised inside a model's forward becomes a ``ModelError`` naming the model."""

    def __init__(self, model_name: str):
        self.model_name = model_name

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if error is None or isinstance(error, (OPRMUsageError, KeyboardInterrupt)) or not isinstance(error, Exception):
            return False
        text = str(error).strip()
        first = text.splitlines()[0] if text else kind.__name__
        raise ModelError(f"the model {self.model_name} failed: {first}") from error
