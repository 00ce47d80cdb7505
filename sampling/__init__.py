"""Samplers: predictors, correctors, the PC and probability-flow ODE samplers (SEMANTICS §5)."""
