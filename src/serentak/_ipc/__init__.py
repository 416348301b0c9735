"""Moving bytes and objects between processes.

``serialize`` pickles (by reference, by value for ``__main__`` and lambdas,
out-of-band buffers), ``connection`` frames messages over a socket or pipe,
``buffers`` sends big buffers beside the pickle through ``segments`` (memfd
shared memory whose fd travels with the message).

May import: ``_os`` and the base modules (``_exceptions``, ``_logging``).
"""
