"""Provider adapters and the built-in echo provider."""
