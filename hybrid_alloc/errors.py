"""Errors caused by the user's input. The CLI prints their message as one line and exits with code 2."""


class UserError(Exception):
    """Bad input: the message names the file / field / flag and what is supported or needed."""


class ModelConfigError(UserError):
    """A config.json that cannot be read or is not a supported model."""
