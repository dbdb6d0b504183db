"""`python -m app ...` is the `charrnn` command."""

import sys

from app.cli import main

sys.exit(main())
