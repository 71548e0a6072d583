"""Exceptions raised for bad user input. Each message names the problem and how to fix it."""


class PreimageError(Exception):
    """Base class of every error preimage raises on purpose (the CLI prints these without a traceback)."""


class ImageReadError(PreimageError, ValueError):
    """An image file could not be read or decoded, or is unusable (e.g. smaller than one cell)."""


class UnknownNameError(PreimageError, KeyError):
    """An unknown representation, model or layer name; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InvalidTargetError(PreimageError, ValueError):
    """A target code that cannot be inverted (NaN/Inf, wrong shape, all zeros)."""
