"""The base of every expected failure: the CLI prints its message (which names the item at fault)
and exits 1 instead of showing a traceback."""


class CruxError(Exception):
    """An expected failure with a message for the user."""


class PretrainedWeightsError(CruxError, ValueError):
    """An encoder's ImageNet weights are missing, unreadable, or not the tensors the encoder has (the message names
    the package or file and the tensor)."""
