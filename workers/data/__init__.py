"""The data pipeline: raw uploads to documents, tokenizers, token arrays."""
