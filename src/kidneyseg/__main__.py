import sys

from kidneyseg.cli import main

sys.exit(main())
