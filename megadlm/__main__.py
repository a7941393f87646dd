"""`python -m megadlm ...` (this is what torchrun runs with `-m megadlm`)."""
import sys

from megadlm.cli import main

# Guarded: a spawned worker process (`megadlm prepare --workers N`) imports this module again as
# __mp_main__, and must not run the command line a second time.
if __name__ == "__main__":
    sys.exit(main())
