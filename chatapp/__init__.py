"""chatapp: chat with a local language model and watch how it chooses every token."""

__version__ = "0.1.0"
