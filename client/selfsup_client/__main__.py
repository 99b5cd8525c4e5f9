"""`python -m selfsup_client`: the client's command line."""

import sys

from selfsup_client.cli import main

sys.exit(main())
