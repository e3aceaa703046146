"""Batch Normalization (Ioffe & Szegedy 2015), exactly."""
