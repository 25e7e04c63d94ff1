"""A small VM that boots Partenza as its init: see vm/build.py and vm/run.py."""
