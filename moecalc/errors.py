"""The one exception type for bad input. The CLI turns it into one line on stderr and exit 2."""


class InputError(ValueError):
    """Bad input: an unreadable or invalid profile, an impossible layout, a batch that does not fit."""
