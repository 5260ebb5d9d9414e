"""Ahead-of-time work for a fast first image: ``python -m optimize build`` (see README.md)."""
