"""Errors caused by the user's input. The CLI prints their message as one line and exits with code 2."""


class UserError(Exception):
    """Bad input: the message names the file / field / flag and what is supported or needed."""


class ModelConfigError(UserError):
    """A config.json that cannot be read or is not a supported model."""


class AllocatorError(UserError):
    """The allocator cannot do what was asked; the message says why and what to do."""


class AllocatorOOM(AllocatorError, MemoryError):
    """An allocation failed: the arena or the device is exhausted (message from the library)."""
