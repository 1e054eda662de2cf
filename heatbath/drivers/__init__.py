"""The drivers: the one scan loop and its three faces, ``sample``, ``optimize`` and ``fit``.

Modules, one job each: ``loop`` (the compiled scan), ``batching`` (which rows a step sees),
``placement`` (sharding over devices), ``federation`` (shards and FSGLD's surrogates), ``moments`` (bounded memory), ``progress`` (the bar),
``inputs`` (targets, checks, starting points), ``cache`` (what repeated calls reuse),
``centre`` (the control-variate centre), ``checkpoint`` and ``settings`` (checkpoint and
resume), ``results`` (``Result``, ``OptimizeResult``), and the faces ``sample``, ``optimize``,
``fit``.
"""

from heatbath.drivers import batching, checkpoint, federation
from heatbath.drivers.cache import clear_caches
from heatbath.drivers.fitting import fit
from heatbath.drivers.inputs import as_target
from heatbath.drivers.optimizing import optimize
from heatbath.drivers.results import OptimizeResult, Result
from heatbath.drivers.sampling import sample

__all__ = ["sample", "optimize", "fit", "Result", "OptimizeResult", "as_target", "clear_caches", "batching",
           "checkpoint", "federation"]
