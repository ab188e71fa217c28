"""Policies at run time: the base policy backends, the residual actor, verified weights."""
