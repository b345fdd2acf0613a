"""Dashboard views; each calls only the public mlcm_core API through AppState."""
