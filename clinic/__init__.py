"""Smart clinic platform: the domain, its state and the web application."""

__version__ = "0.1.0"
