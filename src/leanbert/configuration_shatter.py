"""Configuration of Shatter: single-headed attention with relative sequence partitioning (arXiv 2108.13032)."""

from .configuration_encoder import BOOLEAN, LeanEncoderConfig, Rule, choice, integer, optional

PARTITIONS = ("bernstein", "learned")
NORMALIZERS = ("softmax", "sigmoid")
MAX_NUM_PARTS = 13  # float32 precision of the factored Bernstein parts; see `num_parts` below


class ShatterConfig(LeanEncoderConfig):
    r"""Configuration of a [`ShatterModel`]; BERT's fields (see `LeanEncoderConfig`) without heads, plus the choices
    the paper does not pin down (our reconstruction; README "Shatter" says which parts are the paper's):

    Args:
        num_parts: Number `P` of soft relative-position parts, each with its own value matrix. Default 2: in the
            pretraining comparison (`python -m bench.bench_shatter_pretrain`) P = 3 reached a validation loss only 0.009
            lower, but costs 50% wider values and misses the activation-memory target at length 512 (0.51x
            BERT's vs 0.49x). With P = 3 the query plus three value matrices hold as many parameters as BERT's Q,
            K, V and output projections; with P = 2, a quarter fewer. At most 13, for float32 precision: the
            Bernstein parts are computed factored, from monomials whose coefficients grow like binomials, and
            the cancellation loses digits with every part. Measured over every relative distance against the
            parts computed directly in float64, with R = L: P = 13 stays within 3.4e-5 at L = 512 and 5.7e-5 at
            L = 8192; P = 14 reaches 1.0e-4 at L = 4096, P = 15 1.1e-4 at L = 512, and each further part about
            doubles the error (0.05 at P = 24). The bound holds for the learned partition too, so that it stays a
            check of one field.
        partition: `"bernstein"` (default): fixed Bernstein polynomials of degree P-1 of the rescaled relative
            position, a partition of unity computed exactly by one attention call with wider values.
            `"learned"`: a learned softmax over the parts for each clipped relative distance; needs P explicit
            n x n products per layer.
        distance_scale: `R` in `t = (j - i + R) / 2R`; `None` uses `max_position_embeddings`. Bernstein parts are
            non-negative only for `|j - i| <= R`, so R must be at least `max_position_embeddings - 1` (checked when
            the model is built). For the learned partition it is the clipping distance of `j - i`.
        attention_normalizer: `"softmax"` (default) or `"sigmoid"` with the length-dependent bias `-log n`.
        absolute_position_embeddings: Add BERT's absolute position embeddings (off: relative information only).
        key_projection: Project keys with their own d x d matrix. Off by default: with one head, `q_i . k_j` is the
            bilinear form `x_i W_q W_k^T x_j`, which a query projection alone already spans.
    """

    model_type = "shatter"

    num_parts: int = 2
    partition: str = "bernstein"
    distance_scale: int | None = None
    attention_normalizer: str = "softmax"
    absolute_position_embeddings: bool = False
    key_projection: bool = False

    field_rules = {
        **LeanEncoderConfig.field_rules,
        "num_parts": Rule(integer(1, MAX_NUM_PARTS).check, f"must be an integer in [1, {MAX_NUM_PARTS}]: with more "
                          "parts the factored Bernstein parts lose float32 precision (error above 1e-4)"),
        "partition": choice(*PARTITIONS),
        "distance_scale": optional(integer()),
        "attention_normalizer": choice(*NORMALIZERS),
        "absolute_position_embeddings": BOOLEAN,
        "key_projection": BOOLEAN,
    }

    @property
    def relative_scale(self) -> int:
        """R, the distance that the relative position is rescaled (Bernstein) or clipped (learned) by."""
        return self.distance_scale if self.distance_scale is not None else self.max_position_embeddings
