"""``python -m ki2api``: the same as the ``ki2api`` command."""

from ki2api.cli import main

raise SystemExit(main())
