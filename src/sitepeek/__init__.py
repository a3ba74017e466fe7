"""sitepeek: preview a static site over HTTP/1.1 with live reload.

Importing this package starts nothing and patches nothing.
"""

__version__ = "0.1.0"
