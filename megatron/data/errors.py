"""``DataError``: data that cannot be used as configured (a bad path, split, file or sample count).

It derives from ``ConfigError`` so entry points report it the same way: one line that names
the problem and the fix, and a non-zero exit, instead of a traceback.
"""

from megatron.config import ConfigError


class DataError(ConfigError):
    """Data that cannot be read or used as configured; the message names the fix."""
