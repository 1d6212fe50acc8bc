"""Validation at the door: requests that would harm the scheduler are refused
with a 4xx before they reach it (see docs/rejections.md)."""
