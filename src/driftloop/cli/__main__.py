"""``python -m driftloop.cli``: the same as the ``driftloop`` console script."""

from driftloop.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
