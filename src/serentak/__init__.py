"""serentak: process-based parallelism with the multiprocessing API."""
