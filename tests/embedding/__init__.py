"""Tests for cbmir.services.embedding (a package so its test module names cannot clash with other test folders)."""
