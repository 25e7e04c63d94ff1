"""Partenza: an init system and service orchestrator you can watch on a console."""

__version__ = "0.1.0"
