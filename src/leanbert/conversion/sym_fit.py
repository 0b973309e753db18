"""Fit one SymBert self-attention layer to one BERT self-attention layer, calibrated on that layer's real inputs.

Math (the derivation in brief; methods A2-A4). Per head h, with r = d_h, and up to
the common factor 1/sqrt(r), BERT's attention logit, dropping every term that is constant over the keys j (softmax
ignores those; this removes the key bias entirely), is the bilinear form

    s_ij = x̂_i M̂ x_j^T,   x̂ = [x, 1],   M̂ = Q̂ W_k^T,   Q̂ = [W_q; b_q]        (d+1, d)        (1)

SymBert's logit (x_i W + b) B (x_j W + b)^T has, by the same reduction,

    M̂' = Ŵ K W^T,   Ŵ = blockdiag(W, 1),   K = [B; β],   β = b B                                (2)

We fit M̂' to M̂ in the generalised least-squares (GLS) metric that the calibration activations induce:

    L(W, K) = tr((M̂' - M̂)^T Ĉ (M̂' - M̂) Σ),                                                     (3)

Ĉ the uncentred second moment of x̂ (query side), Σ the within-sequence covariance of x (key side: constants over
j drop out, so keys are centred per sequence). With FF = Ŵ^T Ĉ Ŵ, GG = W^T Σ W, Cq = Ŵ^T Ĉ Q̂ and Ck = W_k^T Σ W,

    L(W, K) = tr(K^T FF K GG) - 2 tr(K^T Cq Ck) + tr(Q̂^T Ĉ Q̂ W_k^T Σ W_k),                        (4)

all small r x r products. For fixed W, (4) is quadratic in K:

    pairwise:  K*(W) = FF^{-1} Cq Ck GG^{-1}                                                       (5)
    symmetric: B = I fixed, β*(W) = (e^T Cq Ck GG^{-1} - FF[r, :r]) / FF[r, r]                    (6)

The fit runs in four steps:

- A2, initial subspace: whiten by S = (C + Σ)/2 (C the uncentred second moment of x). Pairwise: the top r
  directions of the balanced factors of S^{1/2} W_q W_k^T S^{1/2}. Symmetric: the top positive eigen-directions of
  its symmetric part, scaled by the square roots of the eigenvalues, since W W^T is PSD and cannot represent an
  indefinite M.
- A3, variable projection: minimise L(W, K*(W)) over W = S^{-1/2} U by Adam on U, with K eliminated by (5) / (6).
  It is cheap (one (d, d) x (d, r) product per head and step) and lowers the logit error of A2 by a quarter to a
  third on MiniLM, so it is always part of the closed form.
- Bias: b solves b B = β with a ridge, (7) below; unregularised, ‖b‖ reaches thousands (a float32 hazard).
- A4, refinement (`refine_steps > 0`, `refine.py`): Adam on the query_key weight and bias and on the pairwise
  matrices, minimising the MSE between the student's and the teacher's attention-block outputs (after the
  LayerNorm) on three quarters of the calibration sequences. The rest is held out: it measures the error and picks
  the best checkpoint (early stopping, the closed form included), so refinement never raises the held-out error.
  The moments of the closed form come from the same three quarters, so both held-out errors are honest.

The symmetric mode (B = I) is lossy by construction: W W^T is positive semi-definite and symmetric, BERT's
W_q W_k^T is neither. Measured on all-MiniLM-L6-v2 (256 bundled calibration passages; cosine of mean-pooled
embeddings to the source on STS-B sentences): pairwise 0.988 after the closed form, 0.993 refined (STS-B Spearman
equal to the source's); symmetric 0.52 after the closed form, 0.90 refined (Spearman -1.8 points).
"""

import math

import torch
from torch import nn

from .metrics import attention_logit_rel_error
from .refine import REFINE_STEPS, block_output, heldout_mse, refine_block, split_holdout
from .whitening import whitening

QK_STEPS = 200  # A3 Adam steps (converged to ~0.5% of the error on MiniLM)
QK_LR = 3e-3
# λ of (7), relative to the mean squared singular value of B in the whitened gauge. On MiniLM, 1e-4 keeps ‖b‖ within
# about 2.6x the mean ‖x W‖ at a logit-error cost of at most 0.002; 1e-3 (the notes' value) cost up to 0.008.
BIAS_RIDGE = 1e-4

__all__ = ["attention_logit_rel_error", "fit_sym_attention"]  # the first re-exported from `metrics.py`


def fit_sym_attention(
    teacher: nn.Module,
    student: nn.Module,
    hidden: torch.Tensor,
    mask: torch.Tensor,
    refine_steps: int = REFINE_STEPS,
    generator: torch.Generator | None = None,
    *,
    lr: float = 1e-3,
    batch_size: int = 16,
) -> dict[str, float]:
    """Fill `student.self.query_key` and `student.self.pairwise` (if any) so that the student attention block
    reproduces the teacher's on `hidden`; leave everything else of both modules untouched.

    Args:
        teacher: transformers `BertAttention` (`.self.query/.key/.value`, `.output`).
        student: leanbert `LeanAttention` whose `.self` is a `SymBertSelfAttention`; its value and output
            projections are already the teacher's.
        hidden: `(N, L, d)` inputs of this layer in the teacher model, on calibration text; N >= 2.
        mask: `(N, L)` bool, True for real tokens.
        refine_steps: Adam steps of the output refinement (A4); 0 stops after the closed form (A2 + A3).
        generator: drives the held-out split and the batch order; a fixed seed when None.
        lr, batch_size: of the refinement.

    Returns:
        `logit_rel_error` / `logit_rel_error_closed_form`: GLS error (3) relative to the teacher's logit norm, after
        refinement / after the closed form; `output_mse_before` / `output_mse_after`: held-out MSE of the
        attention-block output after the closed form / after refinement; `bias_norm`: ‖b‖ of the result.
    """
    if hidden.shape[0] < 2:
        raise ValueError(f"need at least 2 calibration sequences (some are held out), got {hidden.shape[0]}")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    attention = student.self
    hidden, mask = hidden.detach(), mask.bool()
    train, holdout = split_holdout(hidden.shape[0], generator)

    problem = _LogitFit(teacher, hidden[train], mask[train], attention.config.num_attention_heads,
                        symmetric=attention.pairwise is None)
    _write(attention, *problem.parameters(problem.project(problem.initial(), QK_STEPS)))
    closed_form_error = problem.rel_error(attention)

    target = block_output(teacher, hidden, mask, batch_size)  # (N, L, d)
    if refine_steps > 0:
        fitted = [attention.query_key.weight, attention.query_key.bias]
        fitted += [] if attention.pairwise is None else [attention.pairwise]
        with torch.enable_grad():
            before, after = refine_block(student, fitted, hidden, mask, target, train, holdout, refine_steps,
                                         generator, lr=lr, batch_size=batch_size)
    else:
        before = after = heldout_mse(student, hidden, mask, target, holdout)
    return {
        "logit_rel_error": problem.rel_error(attention),
        "logit_rel_error_closed_form": closed_form_error,
        "output_mse_before": before,
        "output_mse_after": after,
        "bias_norm": attention.query_key.bias.norm().item(),
    }


def _heads(matrix: torch.Tensor, heads: int) -> torch.Tensor:
    """(rows, H r) -> (H, rows, r), float64, detached."""
    return matrix.detach().double().reshape(matrix.shape[0], heads, -1).transpose(0, 1).contiguous()


def _solve_spd(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a^{-1} b for batched small symmetric positive semi-definite a, with a relative jitter of 1e-10 against exact
    singularity. (An explicit inverse: `linalg.solve` is far slower on tiny batched systems on a busy CPU.)"""
    jitter = 1e-10 * a.diagonal(dim1=-2, dim2=-1).mean(-1)[..., None, None] + torch.finfo(a.dtype).tiny
    return torch.linalg.inv_ex(a + jitter * torch.eye(a.shape[-1], dtype=a.dtype, device=a.device))[0] @ b


def _trace(a: torch.Tensor) -> torch.Tensor:
    return a.diagonal(dim1=-2, dim2=-1).sum()


class _LogitFit:
    """The GLS problem (3)-(6) of one layer, in float64, in coordinates whitened by S = (C + Σ)/2: W = S^{-1/2} U.

    Moments over the real tokens: Ĉ (d+1, d+1), the uncentred second moment of x̂ = [x, 1]; Σ (d, d), the
    within-sequence covariance of x weighted by sequence length n_s, Σ = Σ_s n_s Σ_{j∈s} (x_j - x̄_s)^T (x_j - x̄_s)
    / Σ_s n_s², so that Ĉ ⊗ Σ approximates the sum over all (query, key) pairs of a sequence. Every d x d product
    with the moments is done once here; a step of (4) then costs one (d, d) x (d, r) product per head, since
    S^{-1/2} C S^{-1/2} = 2I - Σ̃ with Σ̃ = S^{-1/2} Σ S^{-1/2}.
    """

    def __init__(self, teacher: nn.Module, hidden: torch.Tensor, mask: torch.Tensor, heads: int, symmetric: bool):
        self.symmetric = symmetric
        x, valid = hidden.double(), mask.double()[..., None]  # (N, L, d), (N, L, 1)
        d = x.shape[-1]
        tokens = torch.cat([x, torch.ones_like(valid)], -1)[mask]  # (T, d+1)
        c_hat = tokens.T @ tokens / tokens.shape[0]
        lengths = valid.sum(1, keepdim=True)  # (N, 1, 1)
        centred = ((x - (x * valid).sum(1, keepdim=True) / lengths) * valid * lengths.sqrt()).flatten(0, 1)
        sigma = centred.T @ centred / lengths.square().sum()

        query, key = teacher.self.query, teacher.self.key
        q_hat = _heads(torch.cat([query.weight.T, query.bias[None]], 0), heads)  # (H, d+1, r), [W_q; b_q]
        w_k = _heads(key.weight.T, heads)  # (H, d, r)
        self.s_half, self.s_inv_half = whitening((c_hat[:d, :d] + sigma) / 2)
        self.sigma = self.s_inv_half @ sigma @ self.s_inv_half  # Σ̃
        self.mean = self.s_inv_half @ c_hat[:d, d:]  # (d, 1), S^{-1/2} E[x]
        self.cq = self.s_inv_half @ c_hat[:d] @ q_hat  # (H, d, r), Cq = [U^T cq; cq_last]
        self.cq_last = c_hat[d:] @ q_hat  # (H, 1, r)
        self.ck = (self.s_inv_half @ sigma @ w_k).mT  # (H, r, d), Ck = ck U
        self.reference = ((q_hat.mT @ c_hat @ q_hat) * (w_k.mT @ sigma @ w_k)).sum()  # ‖teacher logits‖²
        self.query_factor, self.key_factor = self.s_half @ q_hat[:, :d], self.s_half @ w_k  # whitened W_q, W_k

    def terms(self, u: torch.Tensor):
        """FF, GG, Cq, Ck of eq. (4) for W = S^{-1/2} U, U (H, d, r)."""
        su = self.sigma @ u  # (H, d, r)
        gg = u.mT @ su
        cross = u.mT @ self.mean  # (H, r, 1)
        ff = torch.cat([torch.cat([2 * u.mT @ u - gg, cross], -1),
                        torch.cat([cross.mT, torch.ones_like(cross[:, :1])], -1)], -2)  # (H, r+1, r+1)
        return ff, gg, torch.cat([u.mT @ self.cq, self.cq_last], -2), self.ck @ u

    def optimal_k(self, ff, gg, cq, ck) -> torch.Tensor:
        """K = [B; β] (H, r+1, r) minimising (4) for fixed W: eq. (5), or eq. (6) with B = I."""
        target = cq @ ck  # (H, r+1, r)
        if not self.symmetric:
            return _solve_spd(ff, _solve_spd(gg, target.mT).mT)
        r = gg.shape[-1]
        beta = (_solve_spd(gg, target[:, -1:].mT).mT - ff[:, -1:, :r]) / ff[:, -1:, -1:]  # (H, 1, r)
        return torch.cat([torch.eye(r, dtype=gg.dtype, device=gg.device).expand_as(gg), beta], 1)

    def loss(self, k, ff, gg, cq, ck) -> torch.Tensor:
        """Eq. (4) summed over heads, relative to the teacher's ‖logits‖²."""
        return 1.0 + (_trace(k.mT @ ff @ k @ gg) - 2 * _trace(k.mT @ cq @ ck)) / self.reference

    def initial(self) -> torch.Tensor:
        """A2: U (H, d, r). With W_q, W_k whitened, S^{1/2} W_q W_k^T S^{1/2} = Y core Y^T in an orthonormal basis Y
        of their 2r columns. Pairwise: the top r left singular vectors of the balanced factors [P λ^{1/2}, Q λ^{1/2}]
        of core = P λ Q^T (invariant to BERT's own gauge W_q R, W_k R^{-T}). Symmetric: V_+ Λ_+^{1/2} from the top r
        eigenpairs of the symmetric part of core, negative eigenvalues clipped to 0 (W W^T is PSD)."""
        r = self.key_factor.shape[-1]
        basis, triangle = torch.linalg.qr(torch.cat([self.query_factor, self.key_factor], -1))  # (H, d, 2r)
        core = triangle[..., :r] @ triangle[..., r:].mT  # (H, 2r, 2r)
        if self.symmetric:
            values, vectors = torch.linalg.eigh((core + core.mT) / 2)
            return basis @ (vectors[..., -r:] * values[:, None, -r:].clamp_min(0).sqrt())
        p, singular, qt = torch.linalg.svd(core)
        factors = torch.cat([p[..., :r], qt[:, :r].mT], -1) * singular[:, None, :r].sqrt().repeat(1, 1, 2)
        return basis @ torch.linalg.svd(factors)[0][..., :r]

    @torch.enable_grad()
    def project(self, u: torch.Tensor, steps: int) -> torch.Tensor:
        """A3, variable projection: Adam on U minimising L(W, K*(W)), K eliminated by (5) or (6). Returns the best
        U visited, the start included: near an exact fit Adam's normalised steps would only add noise."""
        best, best_loss = u, math.inf
        u = u.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([u], lr=QK_LR)
        for step in range(steps + 1):
            terms = self.terms(u)
            loss = self.loss(self.optimal_k(*terms), *terms)
            if loss.item() < best_loss:
                best, best_loss = u.detach().clone(), loss.item()
            if step < steps:
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return best

    def parameters(self, u: torch.Tensor):
        """U, K*(U) → (query_key weight (d, d), bias (d,), pairwise (H, r, r) or None), float32.

        Pairwise: first the gauge W → W L^{-T}, B → L^T B L, β → β L with GG = L L^T, so that q is white on keys
        (W^T Σ W = I); there the bias solves the ridge problem

            b = argmin ‖b B - β‖² + λ' ‖b‖²  =  β B^T (B B^T + λ' I)^{-1},   λ' = λ ‖B‖_F² / r,        (7)

        and finally W → c W, B → B / c², b → c b with c² = ‖B‖_F / sqrt(r), so that B has unit mean squared
        singular value and q carries the logit scale, as in BERT. Symmetric (B = I, no gauge freedom): the same
        ridge in the key metric, b = β GG (GG + λ' I)^{-1} with λ' = λ tr(GG) / r.
        """
        ff, gg, cq, ck = self.terms(u)
        k = self.optimal_k(ff, gg, cq, ck)
        pairwise, beta = k[:, :-1], k[:, -1:]  # (H, r, r), (H, 1, r)
        r = u.shape[-1]
        eye = torch.eye(r, dtype=u.dtype, device=u.device)
        if self.symmetric:
            ridge = BIAS_RIDGE * gg.diagonal(dim1=-2, dim2=-1).mean(-1)[:, None, None]
            bias = _solve_spd(gg + ridge * eye, (beta @ gg).mT).mT
            pairwise = None
        else:
            chol = torch.linalg.cholesky(gg)  # GG = L L^T
            u = torch.linalg.solve_triangular(chol, u.mT, upper=False).mT  # U L^{-T}
            pairwise, beta = chol.mT @ pairwise @ chol, beta @ chol
            mean_square = pairwise.square().sum((-2, -1), keepdim=True) / r
            bias = _solve_spd(pairwise @ pairwise.mT + BIAS_RIDGE * mean_square * eye, (beta @ pairwise.mT).mT).mT
            scale = mean_square.pow(0.25)  # c
            u, pairwise, bias = u * scale, pairwise / scale.square(), bias * scale
        weight = (self.s_inv_half @ u).transpose(0, 1).flatten(1).T  # (H, d, r) -> (d, H r) -> (d_out, d_in)
        return weight.float(), bias.flatten().float(), None if pairwise is None else pairwise.float()

    def rel_error(self, attention: nn.Module) -> float:
        """sqrt of eq. (4), relative, for the student's current parameters: K = [B; b B]."""
        heads = self.cq.shape[0]
        u = self.s_half @ _heads(attention.query_key.weight.T, heads)  # (H, d, r)
        bias = _heads(attention.query_key.bias[None], heads)  # (H, 1, r)
        if attention.pairwise is None:
            pairwise = torch.eye(u.shape[-1], dtype=u.dtype, device=u.device).expand(heads, -1, -1)
        else:
            pairwise = attention.pairwise.detach().double()
        terms = self.terms(u)
        return math.sqrt(max(self.loss(torch.cat([pairwise, bias @ pairwise], 1), *terms).item(), 0.0))


@torch.no_grad()
def _write(attention: nn.Module, weight: torch.Tensor, bias: torch.Tensor, pairwise: torch.Tensor | None) -> None:
    attention.query_key.weight.copy_(weight)
    attention.query_key.bias.copy_(bias)
    if pairwise is not None:
        attention.pairwise.copy_(pairwise)
