"""Encoders of the three modalities into the shared embedding space (one module per modality)."""
