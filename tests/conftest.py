"""Suite-wide settings.

``hb.sample`` ends every run with a self-diagnosis (heatbath.drivers.selfcheck). Its "full"
level compiles a gradient and Hessian-vector products per model (seconds each), which the
hundreds of small runs of this suite do not need: the suite runs the "basic" level (R-hat,
ESS, kinetic temperature) unless a test asks for more (tests/test_defaults.py does).
"""

import os

os.environ.setdefault("HEATBATH_CHECKS", "basic")
