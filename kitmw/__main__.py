"""``python -m kitmw``: the command line (``demo``, ``bench``)."""

from .cli import main

raise SystemExit(main())
