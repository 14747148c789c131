"""Fakes that behave like real model files and servers, for process and e2e tests."""
