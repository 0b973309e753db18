"""The activation whitening of the closed-form fits (SymBert's step A2/A3, SharedBert's step (1)), written once."""

import torch

# Eigenvalues below EIGENVALUE_FLOOR × the largest are raised to it. SymBert's loss relies on the whitening being
# exact (S^{-1/2} C S^{-1/2} = 2I - Σ̃, `sym_fit._LogitFit`), so the floor must stay below every eigenvalue real
# activations have: on all-MiniLM-L6-v2 the smallest is 2.9e-6 of the largest (the LayerNorm's near-null
# direction), which a floor of 1e-6 (SharedBert's former one) would have come within a factor of 3 of. SharedBert
# only picks its subspace in the whitened space, W = S^{-1/2} U with U from S^{1/2}-weighted factors, where the two
# roots cancel, so it needs no larger floor: measured identical on MiniLM and on the tests. 1e-12 stays far above
# float64 rounding (1e-16) and so only guards against an exactly singular S.
EIGENVALUE_FLOOR = 1e-12


def whitening(moment: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """S^{1/2} and S^{-1/2}, the symmetric square root and inverse square root of the symmetric positive
    semi-definite (d, d) `moment` S (a second moment of the calibration activations, float64 for accuracy), from
    its eigen-decomposition S = V Λ V^T with Λ floored at EIGENVALUE_FLOOR × its largest entry."""
    values, vectors = torch.linalg.eigh(moment)
    values = values.clamp_min(EIGENVALUE_FLOOR * values[-1])
    return (vectors * values.sqrt()) @ vectors.T, (vectors / values.sqrt()) @ vectors.T
