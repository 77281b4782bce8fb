"""``python -m ffd <task> ...``: the ``ffd`` command (``ffd.cli``)."""

from ffd.cli import main

if __name__ == "__main__":
    main()
