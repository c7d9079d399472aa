"""The package version, on the ground floor so any module can report it without importing the
public API (and with it every stage)."""

__version__ = "0.1.0"
