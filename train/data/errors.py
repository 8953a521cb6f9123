"""The data's one error type: a dataset that cannot be found or read."""


class DataError(ValueError):
  """A dataset that cannot be found or read; the message says how to get it."""
