"""Fit one SharedBert attention block to one BERT attention block, calibrated on the teacher's activations.

Lossy by nature: each student head has one d_h-dimensional projection for BERT's value path and for both sides of
its scores, subspaces that barely overlap in BERT. The closed form picks a compromise
subspace per head and absorbs a per-head change of basis R_h into the output projection; refinement then trains
the whole block on the teacher's outputs.

Row-vector convention (`x W`), per head h of width d_h = d / H, `x̂ = [x, 1]`; "≅" means equal up to terms that are
constant over the keys j, which the softmax ignores.

Teacher (BERT):   l_ij = (x_i W_q + b_q)(x_j W_k + b_k)^T / √d_h ≅ (x_i W_q + b_q) W_k^T x_j^T / √d_h  (b_k drops out),
                  out = LN(Σ_h softmax(l) (x W_v + b_v) W_o^h + b_o + x).
Student (Shared): s = x W_s + b_s,  l'_ij = s_i diag(d_q ⊙ d_k) s_j^T / √d_h,  values s ⊙ d_v,  output W'_o, b'_o.
                  With W_s = W Q, b_s = c Q and P = Q diag(d_q ⊙ d_k) Q^T (Q orthogonal, so any symmetric P),
                  l'_ij ≅ (x_i W + c) P W^T x_j^T / √d_h.

Closed form, in float64 on the valid tokens of the training sequences (μ = E[x], Σ = Cov[x], S = Σ + μ μ^T / 2):
  (1) Subspace: W = S^{-1/2} U, U the top d_h left singular vectors of
      [S^{1/2} W_v W_o^h / ‖·‖, A / ‖A‖, A^T / ‖A‖],  A = S^{1/2} W_q W_k^T S^{1/2}.
  (2) Scores: P = argmin ‖Σ^{1/2} (W_q W_k^T − W P W^T) Σ^{1/2}‖_F over symmetric P, i.e.
      P = Σ_w^{-1} sym(W^T Σ W_q W_k^T Σ W) Σ_w^{-1} with Σ_w = W^T Σ W. The query-side term: with q̄ = μ W_q + b_q,
      γ = argmin_γ ‖(q̄ W_k^T − γ W^T) Σ^{1/2}‖ = q̄ W_k^T Σ W Σ_w^{-1}, and the centred bias e = μ W + c solves
      e P ≈ γ by ridge regression (e (P Σ_w P + λ I) = γ Σ_w P, λ = 1e-3 tr(P Σ_w P) / d_h).
  (3) Scalings: P = Q Λ Q^T, d_q = sign(Λ) |Λ|^{1/2}, d_k = |Λ|^{1/2}, d_v = 1; each column of W_s is scaled so that
      s spreads like the teacher's values (Λ scaled to match).
  (4) Output (R_h absorption): G_h = argmin E‖[s^h, 1] G_h − x̂ [W_v^h; b_v^h] W_o^h‖² (least squares over the tokens);
      W'_o^h = G_h[:d_h], b'_o = b_o + Σ_h G_h[d_h]. The output LayerNorm is copied from the teacher.
  (5) Only without refinement: W'_o, b'_o = argmin Σ ‖[ctx', 1] G − (ctx W_o + b_o)‖² with ctx' the student's own
      attention output, refitted to the attention the student actually has. (As a start for refinement it is worse
      than (4): Adam from there ends at a higher error.)

Refinement (`refine_steps > 0`): `refine.refine_block` (Adam, lr 1e-3, 16 sequences a step drawn with replacement)
on W_s, b_s, d_q, d_k, d_v, W'_o, b'_o, LayerNorm frozen, minimising the MSE of the block output (after LayerNorm)
plus, as its extra loss, 0.03 × KL(teacher ‖ student) of the attention probabilities per query; both blocks run
their own forward (eager attention, which returns the probabilities). A quarter of the sequences is held out and the
best held-out state is kept. Steps (5) and refinement also see every training sequence cut to a random shorter
length (later keys and queries masked), so that the fit carries over to short inputs such as single sentences.
"""

import torch
from torch import nn

from .metrics import attention_logit_rel_error, value_rel_error
from .refine import (REFINE_STEPS, ExtraLoss, additive_mask, block_output, eager_attention, evaluating, refine_block,
                     split_holdout)
from .whitening import whitening

BIAS_RIDGE = 1e-3  # λ of step (2), relative to tr(P Σ_w P) / d_h
LSTSQ_RIDGE = 1e-8  # ridge of the least squares of steps (4) and (5), relative to the Gram matrix's mean diagonal
KL_WEIGHT = 0.03
LEARNING_RATE = 1e-3
BATCH_SIZE = 16


def fit_shared_attention(teacher: nn.Module, student: nn.Module, hidden: torch.Tensor, mask: torch.Tensor,
                         refine_steps: int = REFINE_STEPS,
                         generator: torch.Generator | None = None) -> dict[str, float]:
    """Set `student` (a `LeanAttention` with a `SharedBertSelfAttention`) in place to imitate `teacher` (a
    `BertAttention`, left unchanged) on `hidden` (N, L, d), the teacher's inputs of this layer on calibration text;
    `mask` (N, L) is True on real tokens. N >= 2: a quarter of the sequences is held out.

    Returns plain floats: `logit_rel_error` / `logit_rel_error_closed_form` (softmax-invariant relative error of the
    attention logits, `metrics.attention_logit_rel_error`, after refinement / after the closed form),
    `value_rel_error` (`metrics.value_rel_error`: the value-output path dense(P v), both blocks with the teacher's
    attention probabilities P), `output_mse_before` / `output_mse_after` (held-out MSE of the block output after the
    closed form / after refinement).
    """
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    hidden, mask = hidden.float(), mask.bool()
    train, holdout = (index.to(hidden.device) for index in split_holdout(len(hidden), generator))
    # rows N + i repeat the training sequences cut short: training sees every one twice, whole and short
    rows, row_masks = torch.cat([hidden, hidden[train]]), torch.cat([mask, _cut_short(mask[train], generator)])
    train_rows = torch.cat([train, len(hidden) + torch.arange(len(train), device=hidden.device)])
    with torch.no_grad():
        _closed_form(teacher, student, hidden[train], mask[train])
        if refine_steps == 0:
            _refit_output(teacher, student, rows[train_rows], row_masks[train_rows])
    closed_form_error = attention_logit_rel_error(teacher, student, hidden, mask)
    target = block_output(teacher, rows, row_masks)
    parameters = [*student.self.parameters(), *student.output.dense.parameters()]
    with torch.enable_grad(), eager_attention(teacher, student):
        before, after = refine_block(student, parameters, rows, row_masks, target, train_rows, holdout, refine_steps,
                                     generator, lr=LEARNING_RATE, batch_size=BATCH_SIZE,
                                     extra_loss=_attention_kl(teacher), with_replacement=True)
    return {
        "logit_rel_error": attention_logit_rel_error(teacher, student, hidden, mask),
        "logit_rel_error_closed_form": closed_form_error,
        "value_rel_error": value_rel_error(teacher, student, hidden, mask),
        "output_mse_before": before,
        "output_mse_after": after,
    }


def _closed_form(teacher: nn.Module, student: nn.Module, hidden: torch.Tensor, mask: torch.Tensor) -> None:
    """Steps (1)-(4) of the module docstring, in float64; float32 parameters out."""
    x = hidden[mask].double()  # (n, d)
    n, d = x.shape
    heads = student.self.config.num_attention_heads
    r = d // heads
    eye = torch.eye(r + 1, dtype=x.dtype, device=x.device)
    mu = x.mean(0)
    sigma = torch.cov(x.T, correction=0)  # Σ (d, d)
    root, inv_root = whitening(sigma + torch.outer(mu, mu) / 2)  # S^{1/2}, S^{-1/2}
    x1 = torch.cat([x, torch.ones_like(x[:, :1])], 1)  # x̂ (n, d + 1)
    moment = x1.T @ x1 / n  # E[x̂ x̂^T] (d + 1, d + 1)
    w_q, b_q = _weights(teacher.self.query)
    w_k, _ = _weights(teacher.self.key)
    w_v, b_v = _weights(teacher.self.value)
    w_o, b_o = _weights(teacher.output.dense)
    value_spread = (w_v.T @ sigma @ w_v).diagonal().sqrt().mean()
    w_s, b_s, lam, w_out, b_out = torch.zeros_like(w_q), torch.zeros_like(b_q), torch.zeros_like(b_q), \
        torch.zeros_like(w_o), b_o.clone()
    for h in range(heads):
        cols = slice(h * r, (h + 1) * r)
        scores = w_q[:, cols] @ w_k[:, cols].T  # W_q W_k^T (d, d)
        a = root @ scores @ root
        value_output = root @ w_v[:, cols] @ w_o[cols]
        mixed = torch.cat([value_output / value_output.norm(), a / a.norm(), a.T / a.norm()], 1)  # (d, 3d)
        w = inv_root @ torch.linalg.svd(mixed, full_matrices=False)[0][:, :r]  # (1) (d, d_h)
        sigma_w = w.T @ sigma @ w
        sigma_w_inv = torch.linalg.inv(sigma_w)
        cross = w.T @ sigma @ scores @ sigma @ w
        p = sigma_w_inv @ (cross + cross.T) / 2 @ sigma_w_inv  # (2) symmetric P (d_h, d_h)
        gamma = (mu @ w_q[:, cols] + b_q[cols]) @ w_k[:, cols].T @ sigma @ w @ sigma_w_inv  # (d_h,)
        psp = p @ sigma_w @ p
        e = torch.linalg.solve(psp + BIAS_RIDGE * psp.trace() / r * eye[:r, :r], p @ sigma_w @ gamma)
        eigenvalues, q = torch.linalg.eigh(p)  # (3)
        scale = value_spread / (q.T @ sigma_w @ q).diagonal().sqrt()
        w, c = w @ q * scale, (e - mu @ w) @ q * scale
        w_s[:, cols], b_s[cols], lam[cols] = w, c, eigenvalues / scale**2
        z = torch.zeros(d + 1, r + 1, dtype=x.dtype, device=x.device)  # [s, 1] = x̂ z  (4)
        z[:d, :r], z[d, :r], z[d, r] = w, c, 1
        target = torch.cat([w_v[:, cols], b_v[None, cols]]) @ w_o[cols]  # (d + 1, d)
        g = _ridge_solve(z.T @ moment @ z, z.T @ moment @ target)  # (d_h + 1, d)
        w_out[cols], b_out = g[:r], b_out + g[r]
    shared, output = student.self, student.output
    shared.shared.weight.copy_(w_s.T)
    shared.shared.bias.copy_(b_s)
    shared.query_scale.copy_(lam.sign() * lam.abs().sqrt())
    shared.key_scale.copy_(lam.abs().sqrt())
    shared.value_scale.fill_(1.0)
    output.dense.weight.copy_(w_out.T)
    output.dense.bias.copy_(b_out)
    output.LayerNorm.load_state_dict(teacher.output.LayerNorm.state_dict())


@torch.no_grad()
def _refit_output(teacher: nn.Module, student: nn.Module, hidden: torch.Tensor, mask: torch.Tensor,
                  chunk: int = 32) -> None:
    """Step (5): the student's output projection by least squares on its own attention output, against the
    teacher's projected attention output (both from the modules' own forward)."""
    gram = rhs = 0
    with evaluating(teacher, student):
        for start in range(0, len(hidden), chunk):
            x, m = hidden[start : start + chunk], mask[start : start + chunk]
            additive = additive_mask(m, x.dtype)
            ctx = student.self(x, attention_mask=additive)[0][m].double()  # (n, d)
            ctx = torch.cat([ctx, torch.ones_like(ctx[:, :1])], 1)
            target = teacher.output.dense(teacher.self(x, attention_mask=additive)[0])[m].double()
            gram, rhs = gram + ctx.T @ ctx, rhs + ctx.T @ target
    g = _ridge_solve(gram, rhs)  # (d + 1, d)
    student.output.dense.weight.copy_(g[:-1].T)
    student.output.dense.bias.copy_(g[-1])


def _attention_kl(teacher: nn.Module) -> ExtraLoss:
    """The refinement's extra loss: KL_WEIGHT · KL(teacher ‖ student) of the attention probabilities of each real
    query, averaged over those queries and the heads; the teacher's probabilities from its own forward. The
    student's are floored at the smallest normal float, so that one underflowing to 0 cannot make the loss
    infinite; padded keys have probability 0 on both sides and add nothing."""

    def loss(hidden: torch.Tensor, mask: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            reference = teacher.self(hidden, attention_mask=additive_mask(mask, hidden.dtype))[1]  # (B, H, L, L)
        log_ratio = torch.xlogy(reference, reference) - reference * probabilities.clamp_min(
            torch.finfo(probabilities.dtype).tiny).log()
        return KL_WEIGHT * log_ratio.sum(-1).transpose(1, 2)[mask].mean()  # sum over keys: (B, L, H)

    return loss


def _cut_short(mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """`mask` (N, L) with each sequence cut to a uniformly random length from 3 tokens to its own length."""
    lengths = mask.sum(1).cpu()
    cut = (torch.rand(len(lengths), generator=generator) * (lengths - 2).clamp_min(0)).long() + 3
    return mask & (torch.arange(mask.shape[1]) < cut[:, None]).to(mask.device)


def _ridge_solve(gram: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """(gram + ε I)^{-1} rhs, ε = LSTSQ_RIDGE × the mean diagonal of gram."""
    eye = torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    return torch.linalg.solve(gram + LSTSQ_RIDGE * gram.diagonal().mean() * eye, rhs)


def _weights(linear: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, b) of `y = x W + b` in float64."""
    return linear.weight.detach().double().T, linear.bias.detach().double()
