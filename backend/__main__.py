"""``python -m flamediff`` is the same as the ``flamediff`` console script."""

from flamediff.cli import main

raise SystemExit(main())
