"""The ``serentak`` command: ``demo`` (the tutorial's tour), ``bench``, ``info``.

Not part of the runtime: nothing under ``serentak`` imports this package except
``serentak.__main__``.

May import: anything in serentak, and ``multiprocessing`` (to compare with it).
"""
