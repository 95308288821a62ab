"""``python -m hpo.cli``: the `lushpo` command."""

import sys

from hpo.cli import main

sys.exit(main())
