"""`python -m megadlm ...` (this is what torchrun runs with `-m megadlm`)."""
import sys

from megadlm.cli import main

sys.exit(main())
