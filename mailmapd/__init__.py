"""mailmapd: Postfix lookup tables served from SQL over socketmap and tcp_table."""

import importlib.metadata

__version__ = importlib.metadata.version("mailmapd")
