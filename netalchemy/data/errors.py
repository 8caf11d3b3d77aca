"""The one exception of `netalchemy.data`: a dataset that cannot be found, read or prepared."""


class DataError(ValueError):
    """A dataset cannot be loaded; the message is one line, fit for a CLI user."""
