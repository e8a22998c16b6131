"""Errors that end in one line for the user."""


class ModelLoadError(RuntimeError):
    """A model could not be found or loaded; the message is one line for the user."""
