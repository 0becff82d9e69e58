"""`python -m gateway` is `sharekey`."""

import sys

from .cli import main

sys.exit(main())
