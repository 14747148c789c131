"""The local endpoint: resolve a name, acquire the model, forward and stream, release."""
