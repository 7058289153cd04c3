import sys

from clippy_rt.cli.main import main

sys.exit(main())
