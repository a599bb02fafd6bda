"""Thin adapters that attach a :class:`~trainwatch.Diagnoser` where a framework builds the Trainer itself.

Each module imports its framework at import time and is only loaded by that framework (Axolotl's plugin loader) or
by a user who has it installed; nothing else in trainwatch imports them.
"""
