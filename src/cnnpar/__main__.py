"""`python -m cnnpar`: the same as the `cnnpar` command."""

import sys

from cnnpar.cli import main

sys.exit(main())
