"""Configuration of Shatter: single-headed attention with relative sequence partitioning (arXiv 2108.13032)."""

from .configuration_encoder import LeanEncoderConfig, require

PARTITIONS = ("bernstein", "learned")
NORMALIZERS = ("softmax", "sigmoid")


class ShatterConfig(LeanEncoderConfig):
    r"""Configuration of a [`ShatterModel`]; BERT's fields (see `LeanEncoderConfig`) without heads, plus the choices
    the paper does not pin down (our reconstruction; README "Shatter" says which parts are the paper's):

    Args:
        num_parts: Number `P` of soft relative-position parts, each with its own value matrix. Default 2: in the
            pretraining comparison (`bench/bench_shatter_pretrain.py`) P = 3 reached a validation loss only 0.009
            lower, but costs 50% wider values and misses the activation-memory target at length 512 (0.51x
            BERT's vs 0.49x). With P = 3 the query plus three value matrices hold as many parameters as BERT's Q,
            K, V and output projections; with P = 2, a quarter fewer.
        partition: `"bernstein"` (default): fixed Bernstein polynomials of degree P-1 of the rescaled relative
            position, a partition of unity computed exactly by one attention call with wider values.
            `"learned"`: a learned softmax over the parts for each clipped relative distance; needs P explicit
            n x n products per layer.
        distance_scale: `R` in `t = (j - i + R) / 2R`; `None` uses `max_position_embeddings`. Bernstein parts are
            non-negative only for `|j - i| <= R`, so R must be at least `max_position_embeddings - 1`. For the
            learned partition it is the clipping distance of `j - i`.
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

    def check_fields(self) -> None:
        super().check_fields()
        require(isinstance(self.num_parts, int) and self.num_parts >= 1, "num_parts", self.num_parts,
                "must be a positive integer")
        require(self.partition in PARTITIONS, "partition", self.partition, f"allowed: {', '.join(PARTITIONS)}")
        require(self.attention_normalizer in NORMALIZERS, "attention_normalizer", self.attention_normalizer,
                f"allowed: {', '.join(NORMALIZERS)}")
        scale = self.distance_scale
        require(scale is None or (isinstance(scale, int) and scale > 0), "distance_scale", scale,
                "must be a positive integer or None")
        if self.partition == "bernstein" and scale is not None:
            require(scale >= self.max_position_embeddings - 1, "distance_scale", scale,
                    f"must be >= max_position_embeddings - 1 = {self.max_position_embeddings - 1} for Bernstein "
                    "parts (they turn negative beyond it)")

    @property
    def relative_scale(self) -> int:
        """R, the distance that the relative position is rescaled (Bernstein) or clipped (learned) by."""
        return self.distance_scale if self.distance_scale is not None else self.max_position_embeddings
