"""Kompaktor: make trained models smaller, faster and cheaper, inside an accuracy bound."""

__version__ = "0.1.0"
