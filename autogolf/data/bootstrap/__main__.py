"""`python -m autogolf.data.bootstrap` (scripts/bootstrap-parameter-golf.sh, `just bootstrap`)."""

import sys

from autogolf.data.bootstrap.cli import main

sys.exit(main())
