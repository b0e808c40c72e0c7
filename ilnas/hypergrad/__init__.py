"""Architecture hypergradients for interleaved multi-level problems."""

from ilnas.hypergrad.engine import METHODS, HypergradResult, hypergradient, unroll
from ilnas.hypergrad.problem import InnerHParams, Problem, Stage, SupernetProblem

__all__ = ["METHODS", "HypergradResult", "InnerHParams", "Problem", "Stage", "SupernetProblem",
           "hypergradient", "unroll"]
