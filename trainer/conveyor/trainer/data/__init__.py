"""Dataset preparation: read a source (`sources`), split, normalise and materialise it once (`prepare`).

Everything that can be wrong with the data is reported here, as a `DataError` naming the problem and
the fix, before any training starts.
"""

from __future__ import annotations


class DataError(ValueError):
    """The data cannot be used as configured; the message says what is wrong and how to fix it."""
