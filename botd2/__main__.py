"""C{python -m botd2}: the same as the C{botd2} command."""

from botd2.cli import run

run()
