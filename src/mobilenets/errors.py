"""Errors the library raises for bad user input; the CLI turns them into one line on stderr and exit 2."""


class MobilenetsError(ValueError):
    """A configuration, input or file that the library cannot accept. The message names the bad value."""


class ConfigError(MobilenetsError):
    """An invalid model or training configuration (width, resolution, output stride, name, ...)."""


class InputError(MobilenetsError):
    """An input tensor, image or annotation that does not fit what the model or loader expects."""


class CheckpointError(MobilenetsError):
    """A weight file whose keys, shapes or metadata do not match the model it is loaded into."""
