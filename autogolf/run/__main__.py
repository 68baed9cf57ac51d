"""`python -m autogolf.run` (what autoresearch.sh execs): one benchmark run."""

import sys

from autogolf.run.orchestrator import main

sys.exit(main())
