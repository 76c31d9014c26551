import sys

from freshtoken.cli import main

sys.exit(main())
