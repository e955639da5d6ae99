"""User-facing errors: the message is the whole story, so the CLI prints it without a traceback."""


class KompaktorError(Exception):
    """An error caused by input or environment, explained in its message."""


class JobSpecError(KompaktorError):
    """A job file or custom resource that does not validate; the message names the field."""


class StageError(KompaktorError):
    """A stage could not do its work; the message says which stage and why."""
