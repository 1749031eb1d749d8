"""``packprep.convert.convert``: the documented import path of the converter (README), kept for users.

The converter lives in :mod:`packprep.formats.convert` beside the formats it writes.
"""

from packprep.formats.convert import convert

__all__ = ["convert"]
