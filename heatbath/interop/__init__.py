"""heatbath inside other libraries: the samplers as NumPyro ``MCMCKernel``s (``hb.numpyro``)."""
