"""``python -m batchnorm ...``: the ``batchnorm`` command."""

import sys

from batchnorm.cli import main

if __name__ == "__main__":
    sys.exit(main())
