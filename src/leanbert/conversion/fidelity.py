"""How close a converted model is to its source, measured on sentence embeddings (mean-pooled last hidden states,
as sentence-transformers pools): the cosine between the two models' embeddings of the same passages
(`embedding_cosines`, the conversion report's fidelity and healing's before and after) and how much of a model's
embedding survives its dropout (`dropout_agreement`, which decides whether a converted model keeps its
attention-probability dropout). Healing's loss pools the same way (`mean_pool`)."""

import torch


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the hidden states of real tokens: (N, L, d) -> (N, d), as sentence-transformers pools."""
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)


def pooled_embeddings(model, batch) -> torch.Tensor:
    """Mean-pooled last hidden states of `model` (N, d) in float32 on the CPU, computed on the model's device."""
    device = next(model.parameters()).device
    batch = {key: value.to(device) for key, value in batch.items()}
    hidden = model.base_model(**batch).last_hidden_state
    return mean_pool(hidden, batch["attention_mask"]).float().cpu()


@torch.no_grad()
def embedding_cosines(teacher, student, batch) -> torch.Tensor:
    """Cosine between two models' sentence embeddings (mean-pooled last hidden states), one value per passage."""
    return torch.nn.functional.cosine_similarity(pooled_embeddings(teacher, batch), pooled_embeddings(student, batch),
                                                 dim=-1)


@torch.no_grad()
def dropout_agreement(model, batch, seed: int = 0, clean: torch.Tensor | None = None) -> float:
    """Mean cosine between `model`'s sentence embeddings with its dropout on (training mode, seeded) and off: how
    much of what the model computes survives the dropout fine-tuning applies. BERT checkpoints keep about 0.95; a
    model whose attention is nearly one-hot keeps far less, because dropping one attention probability then drops
    the one token a query reads. `clean`: the embeddings with dropout off (`pooled_embeddings` in eval mode), where
    the caller has them already. The global random state is left as it was."""
    was_training = model.training
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        noisy = pooled_embeddings(model.train(), batch)
    if clean is None:
        clean = pooled_embeddings(model.eval(), batch)
    model.train(was_training)
    return torch.nn.functional.cosine_similarity(noisy, clean, dim=-1).mean().item()
