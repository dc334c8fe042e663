import sys

from hybrid_alloc.cli import main

sys.exit(main())
