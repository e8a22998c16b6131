"""`python -m chatapp` runs the command line."""

import sys

from chatapp.cli import main

sys.exit(main())
