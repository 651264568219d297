"""tern_jax: ternary-weight networks in JAX/Flax."""
