"""Document assistance: ingestion (`slmd.docassist.ingest`), chunking, prompts."""
