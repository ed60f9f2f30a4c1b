"""``python -m rayscore`` is the ``rayscore`` command."""

from ._cli import main

raise SystemExit(main())
