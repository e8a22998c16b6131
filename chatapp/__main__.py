"""`python -m chatapp` runs the command line."""

import sys

from chatapp.cli.main import main

sys.exit(main())
