"""`python -m sweep.report`: the report printed (see the package's docstring)."""

import sys

import numpy as np

from sweep.report import main

np.seterr(all="ignore")
sys.exit(main())
