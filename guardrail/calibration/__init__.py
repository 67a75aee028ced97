"""Offline checks of a shipped head under another numeric path (int8), on the training splits."""
