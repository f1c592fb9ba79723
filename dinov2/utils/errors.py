"""The kinds of expected failure, as marker base classes that the concrete errors also derive from.

The command-line wrapper (``dinov2.utils.cli``) turns each kind into one exit status, the same in every
entry point, without importing the modules that raise them. This module imports nothing heavy.
"""


class InputError(Exception):
    """Bad input: an option, a config key or value, or a file (config, checkpoint, image, index) that cannot be used."""


class TrainingStopped(Exception):
    """Training stopped on purpose before its end: a non-finite loss or gradient, or a code collapse."""
