"""`python -m fakes.openai`: the same as `meterway fake-upstream`."""

import sys

from fakes.openai import main

sys.exit(main())
