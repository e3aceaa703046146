"""The paper's experiments; each writes a self-contained run folder."""
