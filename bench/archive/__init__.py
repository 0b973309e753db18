"""Earlier one-off benchmarks, kept with their results (README.md here says what they measured and when)."""
