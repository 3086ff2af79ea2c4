"""``python -m backend`` is the same as the ``flamediff`` console script."""

from backend.cli import main

raise SystemExit(main())
