import sys

from jaxnet.cli import main

sys.exit(main())
