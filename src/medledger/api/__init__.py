"""REST API ``/api/v1`` (FastAPI), request signing, error mapping."""
