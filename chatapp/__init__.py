"""chatapp: chat with a local language model and watch how it chooses every token.

Importing this package imports nothing else (the command line reads `__version__` before torch).
"""

__version__ = "0.1.0"
"""chatapp's version: the one place it is written (pyproject.toml reads it from here)."""
