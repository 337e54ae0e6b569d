"""Vript: readers for the released annotations and the Vriptor training formats."""
